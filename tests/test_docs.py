"""The docs name things that exist: every test they name, every file they link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser.test_editor import DOC_IMAGES

ROOT = Path(__file__).resolve().parent.parent


def _defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_test_named_in_the_conformance_matrix_exists() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text()
    named = {name for name in re.findall(r"`(?:[\w.]+::)?(test_\w+)", text)}
    assert len(named) > 40
    missing = sorted(named - _defined_tests())
    assert not missing, f"docs/conformance.md names tests that do not exist: {missing}"


def test_every_test_named_in_any_doc_exists() -> None:
    defined = _defined_tests()
    missing = {}
    for path in (ROOT / "docs").glob("*.md"):
        names = set(re.findall(r"\b(test_[a-z0-9_]+)\b", path.read_text()))
        # file names such as test_install.py are files, checked below
        names = {n for n in names if not list((ROOT / "tests").rglob(f"{n}.py"))}
        if names - defined:
            missing[path.name] = sorted(names - defined)
    assert not missing, f"docs name tests that do not exist: {missing}"


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken


# -- docs/nodes.md names only what exists: in the engine, the shim and the editor -----------

NODES_MD = ROOT / "docs" / "nodes.md"
HELP = ROOT / "js_shim" / "nodes" / "locales" / "en-US"
DIALOGS = ROOT / "js_shim" / "nodes"
# a key in an object literal of a code span: `{command, data, MessageId?, msgType?: 2}`
_KEY = re.compile(r"(?:(?<=[{,\[])|(?<=[{,\[] ))\s*\"?([A-Za-z_]\w*)\"?\??\s*(?=[:,}?])")
# a property path: `msg.ocpp.cbId`, `payload.connections`
_PATH = re.compile(r"\b(?:msg|payload)((?:\.[A-Za-z_]\w*)+)")
# Names the docs say are matched in any case (the retrybackoff and messageattempts data).
_ANY_CASE = re.compile(r"^(?:RetryBackOff|MessageAttempt)")


def _sections(doc: str) -> dict[str, str]:
    """{heading: its text} for the ## and ### headings of a page."""
    parts = re.split(r"^(#{2,3} .+)$", doc, flags=re.M)
    return {parts[i].lstrip("# ").strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return [row for row in rows if row[0] not in ("field", "command")]


def _message_fields(text: str) -> set[str]:
    """The msg properties named in `text`: keys of object literals and property paths."""
    fenced = re.findall(r"```json\n(.*?)```", text, re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    names: set[str] = set()
    for span in re.findall(r"`([^`]+)`", text) + fenced:
        names |= set(_KEY.findall(span))
        for path in _PATH.findall(span):
            names |= set(path.strip(".").split("."))
    return names


class NodesDoc:
    """What docs/nodes.md names, per node type (`CS`, `CSMS`)."""

    def __init__(self, doc: str) -> None:
        sections = _sections(doc)
        shared_config = _table_rows(sections["OCPP-J settings (both nodes)"])
        self.config = {
            "CS": _table_rows(sections["CS (Charging Station)"]) + shared_config,
            "CSMS": _table_rows(sections["CSMS"]) + shared_config,
        }
        cs_commands, csms_commands = re.split(
            r"^CSMS\b", sections["Commands"], maxsplit=1, flags=re.M
        )
        shared = _message_fields(sections["Input messages"] + sections["Output messages"])
        self.fields = {
            "CS": shared | _message_fields(sections["CS (Charging Station)"] + cs_commands),
            "CSMS": shared | _message_fields(sections["CSMS"] + csms_commands),
        }
        self.commands: dict[str, set[str]] = {}
        for node, text in (("CS", cs_commands), ("CSMS", csms_commands)):
            self.commands[node] = set()
            for row in _table_rows(text):
                self.commands[node] |= set(re.findall(r"`(\w+)`", row[0]))
                # the data column names fields too: `cbId`, `password`, `csmsUrl`
                self.fields[node] |= set(re.findall(r"`(\w+)`", row[1]))
        for node in self.fields:
            self.fields[node] -= self.commands[node] - {"command", "commands", "connections"}


def _code() -> str:
    files = [*(ROOT / "ocpp_nodes").rglob("*.py"), *(ROOT / "js_shim" / "lib").glob("*.js")]
    files += DIALOGS.glob("*.js")
    return "\n".join(path.read_text() for path in files)


def _in_code(name: str, code: str) -> bool:
    flags = re.I if _ANY_CASE.match(name) else 0
    quoted = rf"[\"']{re.escape(name)}[\"']|\.{re.escape(name)}\b|\b{re.escape(name)}\s*[:=]"
    return re.search(quoted, code, flags) is not None


def _dialog_labels(html: str) -> dict[str, str]:
    """{property: label text} of a node's edit dialog, and {"": all label texts}."""
    labels = {}
    for target, text in re.findall(r"<label([^>]*)>(.*?)</label>", html, re.S):
        label = " ".join(re.sub(r"<[^>]+>", "", text).split())
        prop = re.search(r'for="node-(?:config-)?input-(\w+)"', target)
        labels[prop.group(1) if prop else f"_{len(labels)}"] = label
    return labels


def nodes_md_problems(
    doc: str, code: str, helps: dict[str, str], dialogs: dict[str, str]
) -> list[str]:
    """Every name docs/nodes.md uses that the code, the editor help or the dialog lacks."""
    spec = NodesDoc(doc)
    problems = []
    for node in ("CS", "CSMS"):
        help_text, dialog = helps[node], dialogs[node]
        labels = _dialog_labels(dialog)
        for name in sorted(spec.fields[node]):
            if not _in_code(name, code):
                problems.append(f"{node} message field {name!r}: not in ocpp_nodes/ or js_shim/")
            if not re.search(rf"\b{re.escape(name)}\b", help_text):
                problems.append(f"{node} message field {name!r}: not in the editor help")
        for command in sorted(spec.commands[node]):
            if not re.search(rf"[\"']{command}[\"']", code):
                problems.append(f"{node} command {command!r}: not in ocpp_nodes/")
            if not re.search(rf"[`\"]{command}[`\"]", help_text):
                problems.append(f"{node} command {command!r}: not in the editor help")
        for row in spec.config[node]:
            label = row[0]
            for prop in re.findall(r"`(\w+)`", row[1]):
                if not _in_code(prop, code):
                    problems.append(f"{node} property {prop!r}: not in ocpp_nodes/ or js_shim/")
                if not re.search(rf"\b{prop}\s*:\s*\{{", dialog):
                    problems.append(f"{node} property {prop!r}: not a default or credential")
            if label not in labels.values():
                problems.append(f"{node} field {label!r}: no such label in the edit dialog")
            if re.sub(r" \(.*\)$", "", label) not in help_text:
                problems.append(f"{node} field {label!r}: not in the editor help")
    return problems


def _nodes_md_inputs() -> tuple[str, str, dict[str, str], dict[str, str]]:
    helps = {node: (HELP / f"{node.lower()}.html").read_text() for node in ("CS", "CSMS")}
    dialogs = {node: (DIALOGS / f"{node.lower()}.html").read_text() for node in ("CS", "CSMS")}
    return NODES_MD.read_text(), _code(), helps, dialogs


def test_nodes_md_names_only_fields_and_commands_that_exist() -> None:
    doc, code, helps, dialogs = _nodes_md_inputs()
    spec = NodesDoc(doc)
    # the parse finds what the page is about (a broken parse must not pass vacuously)
    assert {"customData", "_linkSource", "MessageId", "msgFrom", "timestamp"} <= spec.fields["CS"]
    assert {"auth_list", "since", "sent", "remote"} <= spec.fields["CSMS"]
    assert spec.commands["CS"] == {
        "connect",
        "close",
        "retrybackoff",
        "registration",
        "messageattempts",
    }
    assert len(spec.commands["CSMS"]) == 14
    assert len(spec.config["CS"]) >= 14 and len(spec.config["CSMS"]) >= 15
    problems = nodes_md_problems(doc, code, helps, dialogs)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "old", "new"),
    [
        ("code", '"customData"', '"customDatum"'),
        ("code", '"ws_open"', '"ws_reopen"'),
        ("code", '"allow_auth_list_read"', '"allow_auth_read"'),
        ("help", "auth_cs", "auth_station"),
        ("help", '"retrybackoff"', '"retry_backoff"'),
        ("doc", "`csmsUrl`", "`csmsURL`"),
        ("dialog", "Logins per second", "Logins a second"),
    ],
)
def test_the_nodes_md_check_catches_a_rename(where: str, old: str, new: str) -> None:
    doc, code, helps, dialogs = _nodes_md_inputs()
    if where == "code":
        assert old in code
        code = code.replace(old, new)
    elif where == "doc":
        assert old in doc
        doc = doc.replace(old, new)
    else:
        texts = helps if where == "help" else dialogs
        node = "CS" if old in texts["CS"] and where == "help" else "CSMS"
        assert old in texts[node]
        texts[node] = texts[node].replace(old, new)
    assert nodes_md_problems(doc, code, helps, dialogs), f"{where}: {old} -> {new} not caught"


def test_every_example_flow_the_docs_name_exists_and_every_example_is_named() -> None:
    named: set[str] = set()
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        named |= set(re.findall(r"\bflows/([\w-]+\.json)", path.read_text()))
    examples = {path.name for path in (ROOT / "flows").glob("*.json")}
    assert named - examples == set(), f"docs name flows that do not exist: {named - examples}"
    assert examples - named == set(), f"example flows no doc names: {examples - named}"


def test_every_image_the_docs_show_is_one_the_browser_tests_take() -> None:
    docs = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    shown = {
        name for path in docs for name in re.findall(r"images/([\w-]+)\.png\)", path.read_text())
    }
    assert shown == set(DOC_IMAGES), sorted(shown ^ set(DOC_IMAGES))
    for name in DOC_IMAGES:
        assert (ROOT / "docs" / "images" / f"{name}.png").is_file(), name
    makefile = (ROOT / "Makefile").read_text()
    assert "DOC_IMAGES := " + " ".join(DOC_IMAGES) in makefile
