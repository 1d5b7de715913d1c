"""Third-party OCPP peers driven from tests (see ocpp_rpc.py)."""
