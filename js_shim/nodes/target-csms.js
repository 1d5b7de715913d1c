"use strict";
// target-csms config node: where a CS node connects. It holds data only; the
// CS node passes url and name to the engine when it is created.

module.exports = function (RED) {
  function TargetCsmsNode(config) {
    RED.nodes.createNode(this, config);
    this.url = config.url;
  }

  RED.nodes.registerType("target-csms", TargetCsmsNode);
};
