"use strict";
// CSMS node: a websocket server that charging stations connect to. The OCPP
// engine runs in the ocpp-nodes daemon; this file only hands it the config and
// the messages.

const { getClient } = require("../lib/daemon-client");
const { createFrame } = require("../lib/wire-msg");
const { tlsOptions } = require("../lib/tls");

module.exports = function (RED) {
  function OcppCsmsNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const client = getClient(RED);

    const frame = createFrame(node, "CSMS", config);
    // The second tls-config holds a certificate of the other key type (RSA or
    // ECDSA): with both, the node serves all four suites of OCPP part 2.
    // fleet_tls: the broker's, in fleet mode (mqtts://).
    for (const key of ["tls", "tls2", "fleet_tls"]) {
      const tls = config[key] ? tlsOptions(RED.nodes.getNode(config[key])) : undefined;
      if (tls) {
        frame[key] = tls;
      }
    }
    client.register(node, frame);

    node.on("input", (msg, send, done) => client.input(node, msg, send, done));
    // removed is false on a redeploy of this node: the engine then keeps its
    // stations connected for the node created next with the same id.
    node.on("close", (removed, done) => client.deregister(node, done, removed));
  }

  RED.nodes.registerType("CSMS", OcppCsmsNode, {
    credentials: {
      // A JSON object cbId -> password or hash (docs/security.md), kept as the
      // text the editor stores; "password": never sent back to the editor.
      basic_auths: { type: "password" },
      // fleet mode: the broker's user and password (docs/fleet.md)
      fleet_username: { type: "text" },
      fleet_password: { type: "password" },
    },
  });
};
