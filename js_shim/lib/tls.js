"use strict";
// What a Node-RED `tls-config` node holds, as the PEM text the daemon needs
// (docs/security.md). The tls-config node itself reads its files or uploaded
// data; we only convert Buffers to text.

function text(value) {
  if (value === undefined || value === null || value === "") {
    return undefined;
  }
  return Buffer.isBuffer(value) ? value.toString("utf8") : String(value);
}

/** The `tls` object of a create frame, from a tls-config node (or undefined). */
function tlsOptions(tlsNode) {
  if (!tlsNode || typeof tlsNode.addTLSOptions !== "function") {
    return undefined;
  }
  const opts = tlsNode.addTLSOptions({});
  return {
    cert: text(opts.cert),
    key: text(opts.key),
    ca: text(opts.ca),
    passphrase: text(opts.passphrase),
    // tls-config's "Verify server certificate"; on unless explicitly off.
    verify: opts.rejectUnauthorized !== false,
    servername: text(opts.servername),
  };
}

module.exports = { tlsOptions };
