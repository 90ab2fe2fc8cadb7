"""Readers for the deployment files, so tests can check them without a Docker engine.

- :func:`parse_dockerfile`: instructions of a Dockerfile (continuations joined, comments dropped).
- :func:`interpolate` / :func:`load_compose`: docker compose's ``${VAR}`` substitution rules.
- :class:`DockerIgnore`: which paths a ``.dockerignore`` keeps out of the build context.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# ----------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: ``name`` upper-cased, ``args`` the rest of the (joined) line."""

    name: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in file order; ``\\`` continuations joined, comment lines inside them skipped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for no, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comments inside a continued instruction
            continue
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        text = " ".join(part for part in buf if part)
        name, _, args = text.partition(" ")
        out.append(Instruction(name.upper(), args.strip(), start))
        buf = []
    return out


def exec_form(args: str) -> list[str]:
    """The argv of a JSON exec-form ``CMD``/``ENTRYPOINT``; raises when it is the shell form."""
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not an exec-form array: {args!r}")
    return value


def one(instructions: list[Instruction], name: str) -> Instruction:
    """The single instruction called ``name`` (a Dockerfile may only have one CMD, USER... here)."""
    found = [i for i in instructions if i.name == name]
    if len(found) != 1:
        raise AssertionError(f"expected exactly one {name}, found {len(found)}")
    return found[0]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """Every ``ENV KEY=VALUE ...`` merged in order (later wins, like the image config)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.name != "ENV":
            continue
        for token in shlex.split(ins.args):
            key, sep, value = token.partition("=")
            if not sep:
                raise ValueError(f"line {ins.line}: legacy `ENV key value` form is not used here")
            env[key] = value
    return env


def healthcheck(instructions: list[Instruction]) -> tuple[dict[str, str], list[str]]:
    """``HEALTHCHECK --opt=v ... CMD [...]`` -> (options, exec argv of the probe)."""
    args = one(instructions, "HEALTHCHECK").args
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        opt, _, rest = rest.partition(" ")
        key, _, value = opt[2:].partition("=")
        options[key] = value
        rest = rest.strip()
    kind, _, probe = rest.partition(" ")
    if kind.upper() != "CMD":
        raise ValueError(f"HEALTHCHECK without CMD: {args!r}")
    return options, exec_form(probe)


def flag_value(argv: list[str], flag: str) -> str:
    """The value after ``flag`` in an argv (``--port 8000`` or ``--port=8000``)."""
    for i, token in enumerate(argv):
        if token == flag:
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    raise KeyError(f"{flag} not in {argv}")


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """A copy of ``argv`` with ``flag``'s value replaced (the flag must be present)."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == flag:
            out[i + 1] = value
            return out
        if token.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    raise KeyError(f"{flag} not in {argv}")


# ----------------------------------------------------------------------------- compose

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


class MissingVariable(ValueError):
    """A ``${VAR:?msg}`` / ``${VAR?msg}`` whose variable is unset (or empty for ``:?``)."""


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split into ``("lit", text)``, ``("plain", NAME)`` and ``("braced", inside)`` pieces; a braced
    expression may nest others (``${A:-${B}}``), so braces are matched by depth, not by regex."""
    out: list[tuple[str, str]] = []
    i, lit = 0, []
    while i < len(text):
        if text.startswith("$$", i):
            lit.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise ValueError(f"unclosed ${{ in {text!r}")
            out += [("lit", "".join(lit)), ("braced", text[i + 2 : j - 1])]
            lit, i = [], j
        elif text[i] == "$" and (m := _NAME.match(text, i + 1)):
            out += [("lit", "".join(lit)), ("plain", m.group(0))]
            lit, i = [], m.end()
        else:
            lit.append(text[i])
            i += 1
    out.append(("lit", "".join(lit)))
    return [t for t in out if t != ("lit", "")]


def _braced(inside: str) -> tuple[str, str | None, str]:
    b = _BRACED.match(inside)
    if b is None:
        raise ValueError(f"invalid interpolation ${{{inside}}}")
    return b.group("name"), b.group("op"), b.group("arg") or ""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?e}``,
    ``${VAR?e}``, ``${VAR:+r}``, ``${VAR+r}``, nested defaults. Unset plain variables become ``""``."""
    parts = []
    for kind, value in _tokens(text):
        if kind == "lit":
            parts.append(value)
        elif kind == "plain":
            parts.append(env.get(value, ""))
        else:
            name, op, arg = _braced(value)
            current = env.get(name)
            if op is None:
                parts.append(current or "")
            elif op == ":-":
                parts.append(current if current else interpolate(arg, env))
            elif op == "-":
                parts.append(current if current is not None else interpolate(arg, env))
            elif op in (":?", "?"):
                if current is None or (op == ":?" and not current):
                    raise MissingVariable(f"required variable {name} is missing a value: {arg}")
                parts.append(current)
            elif op == ":+":
                parts.append(interpolate(arg, env) if current else "")
            else:  # "+"
                parts.append(interpolate(arg, env) if current is not None else "")
    return "".join(parts)


def variables(text: str) -> dict[str, str | None]:
    """Variable name -> its operator (``":-"``, ``":?"``... or ``None``) for every ``${...}``/``$VAR``."""
    found: dict[str, str | None] = {}
    for kind, value in _tokens(text):
        if kind == "plain":
            found.setdefault(value, None)
        elif kind == "braced":
            name, op, arg = _braced(value)
            found.setdefault(name, op)
            for inner, inner_op in variables(arg).items():
                found.setdefault(inner, inner_op)
    return found


def _walk(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(v, env) for v in node]
    if isinstance(node, dict):
        # x- extension fields are not interpolated by compose either (they are templates).
        return {k: (v if str(k).startswith("x-") else _walk(v, env)) for k, v in node.items()}
    return node


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as compose sees it with ``env`` (default: nothing set, i.e. the defaults).

    YAML anchors/aliases are resolved by the YAML loader, as compose does.
    """
    return _walk(yaml.safe_load(path.read_text()), env or {})


def environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's ``environment`` as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def port_mappings(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Short-syntax ports as ``(host_ip, host_port, container_port[/proto])`` tuples."""
    out = []
    for spec in service.get("ports") or []:
        parts = str(spec).split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            out.append(("", parts[0], parts[1]))
        else:
            out.append(("", "", parts[0]))
    return out


def memory_bytes(text: str) -> int:
    """Compose byte values (``512m``, ``3g``, ``1024k``, ``1gb``) -> bytes."""
    m = re.fullmatch(r"(?i)\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*", str(text))
    if m is None:
        raise ValueError(f"not a byte value: {text!r}")
    scale = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


# ----------------------------------------------------------------------------- .dockerignore


class DockerIgnore:
    """``.dockerignore`` semantics: patterns in order, ``!`` re-includes, the last match wins, and an
    excluded directory excludes everything below it unless a later ``!`` pattern names a path in it.
    ``**`` matches any number of directories (including none)."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:].strip() if negate else line
            self.rules.append((negate, pattern.strip("/")))

    @staticmethod
    def _match(pattern: str, path: str) -> bool:
        candidates = {pattern}
        if pattern.startswith("**/"):
            candidates.add(pattern[3:])
        # fnmatch's * also crosses "/", which over-matches only for patterns like "a*b/c": none here.
        return any(fnmatch.fnmatchcase(path, c) for c in candidates)

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative, ``/``-separated) is left out of the build context."""
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for negate, pattern in self.rules:
            if any(self._match(pattern, p) for p in prefixes):
                verdict = not negate
        return verdict
