// Shared by the CS and CSMS dialogs (Node-RED serves a module's resources/
// folder at resources/<module>/): their tabs, the validators of what is typed
// in them (cbId, CS Auth list, number settings, fleet broker and group), how
// fields that a mode does not use are marked, and how a property that an
// older export lacks stays absent when its dialog is saved unchanged.
//
// Validators take (value, opt): Node-RED 3.1 and later pass `opt` and show a
// returned string as the reason; without `opt` they return false (invalid).
(function () {
  "use strict";
  if (window.OcppNodesDialog) {
    return;
  }

  // Longest Charging Station identity (OCPP 2.0.1 part 4, 3.1.1), counted in
  // characters (code points), as the engine counts it
  // (ocpp_nodes/transport/identity.py).
  const MAX_CBID_LENGTH = 48;

  // A value Node-RED replaces with an environment variable when the flow starts.
  const ENV_VAR = /^\$(\([a-zA-Z_][a-zA-Z0-9_]*\)|\{[a-zA-Z_][a-zA-Z0-9_]*\})$/;

  // Why `cbId` cannot be a station identity, or null (identity.py's rules).
  function cbIdProblem(cbId) {
    if (cbId === "") {
      return "the cbId is empty";
    }
    if (cbId.includes(":")) {
      return "a cbId must not contain ':'";
    }
    const length = Array.from(cbId).length;
    if (length > MAX_CBID_LENGTH) {
      return `a cbId has at most ${MAX_CBID_LENGTH} characters, this one ${length}`;
    }
    return null;
  }

  // Validator of a CS node's cbId.
  function cbIdValid(value, opt) {
    const problem = typeof value === "string" ? cbIdProblem(value) : "the cbId is empty";
    return problem === null ? true : opt ? `cbId: ${problem}` : false;
  }

  // The value a saved password credential shows in the dialog: Node-RED sends
  // only that one is saved, and keeps it when the field still says so.
  const SAVED = "__PWRD__";

  // Why `text` cannot be the CSMS's CS Auth list, or null. Empty (no list),
  // saved (not shown) and an environment variable are fine; otherwise a JSON
  // object cbId -> password, where a password is a string: plain, or a hash
  // such as "$scrypt$..." (made by `ocpp-nodes hash-password`).
  function authListProblem(text) {
    if (text === undefined || text === null || text === SAVED || ENV_VAR.test(text) ||
        String(text).trim() === "") {
      return null;
    }
    let list;
    try {
      list = JSON.parse(text);
    } catch (err) {
      // where, not the parser's words: they may quote the text, passwords and all
      const at = /position (\d+)/.exec(err.message);
      return at ? `not valid JSON (at character ${Number(at[1]) + 1})` :
        /end of JSON/.test(err.message) ? "not valid JSON (it ends too soon)" : "not valid JSON";
    }
    if (list === null || typeof list !== "object" || Array.isArray(list)) {
      return 'must be a JSON object {"cbId": "password", ...}';
    }
    for (const [cbId, password] of Object.entries(list)) {
      const problem = cbIdProblem(cbId);
      if (problem) {
        return `${JSON.stringify(cbId)}: ${problem}`;
      }
      if (typeof password !== "string") {
        return `the password of ${JSON.stringify(cbId)} must be a string ` +
          `(in quotes), not ${password === null ? "null" : typeof password}`;
      }
    }
    return null;
  }

  // Validator of a CS Auth list (the dialog's field, or the node's credential).
  function authListValid(value, opt) {
    const problem = authListProblem(value);
    return problem === null ? true : opt ? `CS Auth: ${problem}` : false;
  }

  // A number setting: empty (absent in older exports) means the engine's
  // default; otherwise at least `min`, and whole when `whole`. The reason
  // names the field by the `label` of its property definition.
  function numberSetting(min, whole) {
    return function (value, opt) {
      if (value === undefined || value === null || String(value).trim() === "") {
        return true;
      }
      const number = Number(value);
      if (Number.isFinite(number) && number >= min && (!whole || Number.isInteger(number))) {
        return true;
      }
      const reason = `must be ${whole ? "a whole number" : "a number"} of at least ${min}`;
      return opt ? (opt.label ? `${opt.label}: ${reason}` : reason) : false;
    };
  }

  // Why `text` cannot be a fleet's broker URL, or null: mqtt://host[:port] or
  // mqtts://host[:port], without user or password (they are credentials: a
  // URL is exported with the flow). As the engine checks it
  // (ocpp_nodes/fleet/broker.py), and never quoting the URL.
  function brokerUrlProblem(text) {
    const url = text === undefined || text === null ? "" : String(text).trim();
    if (url === "") {
      return "fleet mode needs the broker's URL, e.g. mqtt://127.0.0.1:1883";
    }
    const parts = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)/.exec(url);
    const scheme = parts ? parts[1].toLowerCase() : "";
    if (scheme !== "mqtt" && scheme !== "mqtts") {
      return "the broker URL must start with mqtt:// or mqtts://";
    }
    const authority = parts[2];
    if (authority.includes("@")) {
      return "put the broker's user and password in the credentials, not the URL";
    }
    const address = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]*)(?::(.*))?$/.exec(authority);
    if (!address || address[1] === "") {
      return "the broker URL names no host";
    }
    const port = address[2];
    if (port !== undefined && port !== "" && !(/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535)) {
      return "the broker URL's port is not a TCP port number (1-65535)";
    }
    return null;
  }

  // A fleet's group: a topic level and a shared-subscription name
  // (GROUP_PATTERN of ocpp_nodes/fleet/topics.py).
  const FLEET_GROUP = /^[A-Za-z0-9_.-]{1,64}$/;

  // Why `text` cannot name a fleet group, or null; empty means "default".
  function fleetGroupProblem(text) {
    if (text === undefined || text === null || text === "" || FLEET_GROUP.test(text)) {
      return null;
    }
    return "must be 1-64 letters, digits, '_', '-' or '.'";
  }

  // Marks the form rows of `rows` (a jQuery set) as not used (`unused`) or
  // used again: greyed, their inputs disabled, and clicks (the pencil of a
  // config node's select) ignored. Their values stay, and are saved as they are.
  function markUnused(rows, unused) {
    rows.css({ opacity: unused ? 0.45 : "", "pointer-events": unused ? "none" : "" });
    rows.find("input, select, button").prop("disabled", unused);
    rows.find("a.red-ui-button").toggleClass("disabled", unused);
  }

  // The tabs of a dialog, as Node-RED's MQTT broker node makes them: `id` is
  // the <ul> of the tab bar, `id`-content holds one <div> per tab, `tabs` the
  // [div id, label] of each in order. The first is shown.
  function dialogTabs(id, tabs) {
    const bar = RED.tabs.create({
      id,
      // the shown tab's label whole ("Connection"), the others share the rest
      minimumActiveTabWidth: 130,
      onchange: function (tab) {
        $(`#${id}-content`).children().hide();
        $(`#${tab.id}`).show();
      },
    });
    for (const [tabId, label] of tabs) {
      bar.addTab({ id: tabId, label });
    }
    setTimeout(() => bar.resize(), 0);
    return bar;
  }

  // The dialog's property inputs (`#node-input-<name>`) that show a property
  // the node lacks (older exports), with what each showed when the dialog
  // opened; `shown` maps a name to what absent means (a checkbox's state or
  // a select's value), set in its input.
  function absentFields(node, shown) {
    const fields = [];
    for (const name of Object.keys(node._def.defaults)) {
      const input = $(`#node-input-${name}`);
      if (node[name] !== undefined || input.length === 0) {
        continue;
      }
      if (name in shown && input.attr("type") === "checkbox") {
        input.prop("checked", shown[name]);
      } else if (name in shown) {
        input.val(shown[name]);
      }
      fields.push({ name, input, before: fieldValue(input) });
    }
    return fields;
  }

  function fieldValue(input) {
    return input.attr("type") === "checkbox" ? input.prop("checked") : input.val();
  }

  // Called in oneditsave: a field from absentFields still showing what it
  // showed loses its id, so Node-RED leaves the property absent (as before)
  // rather than writing false or "" (which mean the same to the engine).
  function keepAbsent(fields) {
    for (const field of fields) {
      if (fieldValue(field.input) === field.before) {
        field.input.removeAttr("id");
      }
    }
  }

  window.OcppNodesDialog = {
    MAX_CBID_LENGTH, SAVED, cbIdProblem, cbIdValid, authListProblem, authListValid,
    numberSetting, brokerUrlProblem, fleetGroupProblem, markUnused, dialogTabs, absentFields, keepAbsent,
  };
})();
