"use strict";
// CSMS node: a websocket server that charging stations connect to. The OCPP
// engine runs in the ocpp-nodes daemon; this file only hands it the config and
// the messages.

const { getClient, createFrame } = require("../lib/daemon-client");

module.exports = function (RED) {
  function OcppCsmsNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const client = getClient(RED);

    client.register(node, createFrame(node, "CSMS", config));

    node.on("input", (msg, send, done) => client.input(node, msg, send, done));
    node.on("close", (removed, done) => client.deregister(node, done));
  }

  RED.nodes.registerType("CSMS", OcppCsmsNode, {
    credentials: {
      // A JSON object cbId -> password, kept as the text the editor stores.
      basic_auths: { type: "text" },
    },
  });
};
