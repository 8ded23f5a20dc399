"""The ``wm`` application: ``keygen``, ``generate``, ``detect``, ``scan``, ``calibrate``, ``demo``, ``schemes``, ``serve``,
``serve-embeddings``, ``eaas``, ``fingerprint``, ``tagger``, ``synthid``, ``evidence``, ``semantic``, ``radioactivity``, ``probe``.

Exit codes: 0 success (a negative detection is a success), 2 usage or input errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline by construction
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars on stderr

import typer  # noqa: E402

from .calibrate import calibrate_cmd  # noqa: E402
from .demo import demo  # noqa: E402
from .detect import detect  # noqa: E402
from .eaas import eaas_app, serve_embeddings  # noqa: E402
from .evidence import evidence_app  # noqa: E402
from .fingerprint import fingerprint_app  # noqa: E402
from .generate import generate  # noqa: E402
from .keygen import keygen  # noqa: E402
from .scan import scan  # noqa: E402
from .probe import probe  # noqa: E402
from .radioactivity import radioactivity  # noqa: E402
from .schemes import schemes  # noqa: E402
from .semantic import semantic_app  # noqa: E402
from .synthid import synthid_app  # noqa: E402
from .serve import serve  # noqa: E402
from .tagger import tagger_app  # noqa: E402

app = typer.Typer(
    name="wm",
    help="wmkit: watermark text and detect it with only the key and the tokenizer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"wmkit {version('wmkit')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print wmkit's version and exit.")) -> None:
    """wmkit: watermark text and detect it with only the key and the tokenizer."""
app.command()(keygen)
app.command()(generate)
app.command()(detect)
app.command()(demo)
app.command()(schemes)
app.command()(scan)
app.command("calibrate")(calibrate_cmd)
app.command()(radioactivity)
app.command()(probe)
evidence_app.command("probe")(probe)
evidence_app.command("radioactivity")(radioactivity)
app.command()(serve)
app.command("serve-embeddings")(serve_embeddings)
app.add_typer(eaas_app, name="eaas")
app.add_typer(fingerprint_app, name="fingerprint")
app.add_typer(tagger_app, name="tagger")
app.add_typer(synthid_app, name="synthid")
app.add_typer(evidence_app, name="evidence")
app.add_typer(semantic_app, name="semantic")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
