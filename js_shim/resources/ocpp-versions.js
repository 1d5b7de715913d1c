// Shared by the CS and CSMS dialogs (Node-RED serves a module's resources/
// folder at resources/<module>/): the names of the OCPP versions the engine
// speaks, and how a node's `ocpp_versions` setting is read and checked.
(function () {
  "use strict";
  if (window.OcppNodesVersions) {
    return;
  }
  // The OCPP versions the engine speaks: websocket subprotocol, and the
  // version names it also takes (docs/nodes.md, Versions).
  const VERSIONS = { "ocpp1.6": "ocpp1.6", "1.6": "ocpp1.6", "ocpp2.0.1": "ocpp2.0.1",
    "2.0.1": "ocpp2.0.1", "ocpp2.1": "ocpp2.1", "2.1": "ocpp2.1" };
  // What an export without `ocpp_versions` speaks (as before versions were chosen).
  const ABSENT_VERSIONS = ["ocpp2.0.1"];
  // The names of a versions setting (a list, or one string of names separated
  // by commas or spaces), known ones as subprotocols, unknown ones as written,
  // each once, in their order; null when it is neither.
  function versionNames(value) {
    let names = value;
    if (typeof value === "string") {
      names = value.split(/[\s,]+/);
    }
    if (!Array.isArray(names)) {
      return null;
    }
    const out = [];
    for (const name of names) {
      const text = String(name).trim();
      const known = VERSIONS[text] || text;
      if (text && !out.includes(known)) {
        out.push(known);
      }
    }
    return out;
  }
  // Absent (older exports: 2.0.1) or at least one name, every one known.
  function versionsValid(value) {
    if (value === undefined || value === null) {
      return true;
    }
    const names = versionNames(value);
    return names !== null && names.length > 0 && names.every((name) => name in VERSIONS);
  }
  window.OcppNodesVersions = { VERSIONS, ABSENT_VERSIONS, versionNames, versionsValid };
})();
