"""``wm schemes``: every text scheme, its key, its detector's needs and its parameters (from their declarations)."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import typer

from ..params import describe
from ..watermark.text import SCHEMES, key_kind
from .common import die


def schemes(
    name: Optional[str] = typer.Argument(None, help="One scheme (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """List the text schemes with their parameters: type, default, accepted values and meaning."""
    if name is not None and name not in SCHEMES:
        die(f"unknown scheme {name!r}; expected one of {', '.join(SCHEMES)}")
    chosen = {name: SCHEMES[name]} if name else SCHEMES
    rows = [{"scheme": s, "key": "--vllm-key N" if key_kind(s) == "vllm" else "key file (-k)",
             "detector": dataclasses.asdict(cls.capabilities),
             "parameters": [dataclasses.asdict(d) for d in describe(cls)]} for s, cls in chosen.items()]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        needs = [k for k, v in r["detector"].items() if v]
        typer.echo(f"{r['scheme']}  (key: {r['key']}; detector: {', '.join(needs) or 'key and tokenizer only, CPU'})")
        for p in r["parameters"]:
            accepts = f"  {p['accepts']}" if p["accepts"] else ""
            typer.echo(f"  {p['name']:<34} {p['type']:<12} default {json.dumps(p['default']):<14}{accepts}")
            typer.echo(f"  {'':<34} {p['help']}")
