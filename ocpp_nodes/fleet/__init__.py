"""Fleet mode (docs/fleet.md): station gateways and CSMS nodes joined by an MQTT 5 broker.

- :mod:`.topics`: the topics, properties and records on the broker;
- :mod:`.broker`: one MQTT connection kept up (paho-mqtt on the event loop);
- :mod:`.gateway`: ``ocpp-nodes gateway``, stations' websockets to the broker;
- :mod:`.remote`: the CSMS node's side, every station of the fleet as a link.
"""
