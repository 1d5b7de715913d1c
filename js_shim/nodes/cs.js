"use strict";
// CS node: a charging station connected to a CSMS. The OCPP engine runs in the
// ocpp-nodes daemon; this file only hands it the config and the messages.

const { getClient } = require("../lib/daemon-client");
const { createFrame } = require("../lib/wire-msg");
const { tlsOptions } = require("../lib/tls");

module.exports = function (RED) {
  function OcppCsNode(config) {
    RED.nodes.createNode(this, config);
    const node = this;
    const client = getClient(RED);

    const frame = createFrame(node, "CS", config);
    const target = config.csms ? RED.nodes.getNode(config.csms) : null;
    if (target) {
      frame.target = { url: target.url, name: target.name };
    }
    // Requests kept while offline live on disk in the Node-RED user dir.
    frame.userDir = RED.settings.userDir;
    const tls = config.tls ? tlsOptions(RED.nodes.getNode(config.tls)) : undefined;
    if (tls) {
      frame.tls = tls;
    }
    client.register(node, frame);

    node.on("input", (msg, send, done) => client.input(node, msg, send, done));
    // removed is false on a redeploy of this node: the engine then keeps its
    // connection for the node created next with the same id.
    node.on("close", (removed, done) => client.deregister(node, done, removed));
  }

  RED.nodes.registerType("CS", OcppCsNode, {
    credentials: {
      csms_pw: { type: "password" },
    },
  });
};
