"""The package's layers, read from its imports: imports point down only, and no
module imports itself back through others (docs/architecture.md draws the layers).

Every import counts, those under ``TYPE_CHECKING`` and inside functions too: a
type-only back-arrow still ties a lower layer to a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ipso_objects", "lwm2m_server", "simulators")

LAYERS: dict[str, int] = {
    "ipso_objects": 0,
    "lwm2m_server.suit": 1,
    "lwm2m_server.compilers": 2,
    "lwm2m_server.security": 2,
    "lwm2m_server.core": 3,
    "lwm2m_server.transport": 3,
    "lwm2m_server.store": 4,
    "lwm2m_server.ota": 5,
    "lwm2m_server": 6,  # the application: server, bootstrap_server, daemon, config, api/, cli/
}
"""Rank of each layer. A module may import its own layer or any of a lower rank;
layers of equal rank do not import each other."""

SIMULATOR_MAY_IMPORT = ("ipso_objects", "lwm2m_server.suit", "lwm2m_server.security", "lwm2m_server.transport")
"""The device side shares the object model, SUIT, key material and DTLS code, never
the server's protocol core, stores, rollouts or application."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the three packages it imports."""
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from pkg import module`` imports the module, ``from module import name`` the module
                targets.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source
                               for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def layer_of(module: str) -> str:
    return max((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), key=len)


def test_imports_point_down_only():
    wrong = []
    for module, targets in import_graph().items():
        if module.startswith("simulators"):
            wrong += [f"{module} -> {t} (the simulator imports only {', '.join(SIMULATOR_MAY_IMPORT)})"
                      for t in targets if t.split(".")[0] != "simulators"
                      and not any(t == allowed or t.startswith(allowed + ".") for allowed in SIMULATOR_MAY_IMPORT)]
            continue
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} ({here}, rank {LAYERS[here]}) -> {target} ({there}, rank {LAYERS[there]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = import_graph()
    circles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_every_module_has_a_layer_and_the_check_sees_arrows():
    graph = import_graph()
    assert all(layer_of(m) for m in graph if m.startswith("lwm2m_server"))
    # the check reads real arrows: the application imports every layer below it
    assert {layer_of(t) for t in graph["lwm2m_server.server"]} >= {
        "lwm2m_server.core", "lwm2m_server.transport", "lwm2m_server.security", "lwm2m_server.store"}
