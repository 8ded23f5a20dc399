"""Secret keys: loading, generation, and derivation of per-scheme subkeys.

A key is at least 128 random bits, written as hexadecimal text (a key file holds one line; blank
lines and lines starting with ``#`` are ignored). It comes from an explicit argument, a key file
(``--key-file``) or the ``WMKIT_KEY`` environment variable -- never from a default in the code.
Every use derives its own subkey with HMAC-SHA256(secret, ``"wmkit/v1/" + label``) (byte subkeys,
:meth:`SecretKey.subkey`) or HMAC-SHA256(secret, ``"wmkit/v2/" + label``) (PRF v2 keys,
:meth:`SecretKey.prf_key`), so one secret serves every scheme without two schemes sharing a green list.
A :class:`ScopedKey` holds only the subkeys one scheme uses (what a Ray worker receives).

Every key reaches wmkit through :func:`resolve` -- the command line, profiles files, the vLLM
plugin and the Python API alike: wmkit key files and hex keys, vLLM's integer keys
(:func:`parse_vllm_key`) and SynthID's explicit key lists (:func:`parse_int_keys`), given as a
value, a file, or an environment variable. No error it raises shows a key's value.

>>> key = SecretKey.from_hex("00112233445566778899aabbccddeeff")
>>> key.prf_key("kgw") != key.prf_key("unigram")
True
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

from .errors import InputError, InvalidKeyError

ENV_VAR = "WMKIT_KEY"
VLLM_KEY_ENV = "WMKIT_VLLM_KEY"
MAX_VLLM_KEY = 2**64 - 1  # vLLM's Philox keys are 64-bit
KEY_KINDS = ("wmkit", "vllm", "synthid")  # what a scheme takes: a wmkit key, vLLM's integer, or either for SynthID
MIN_BITS = 128
DEFAULT_BITS = 256
SUBKEY_LABEL = "wmkit/v1/"  # HMAC label prefix of byte subkeys (SecretKey.subkey)
PRF_LABEL = "wmkit/v2/"  # HMAC label prefix of PRF v2 keys (SecretKey.prf_key)


class KeyFileWarning(UserWarning):
    """A key file others can read (printed by the CLI as ``wm: warning: ...``)."""


class _Identified:
    """Equality and hashing of keys by their public identity (never by the secret itself)."""

    def identity(self) -> str:  # pragma: no cover - implemented by both key classes
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        """Equal when the full 256-bit digests behind the public ids are (compared in constant time)."""
        if not isinstance(other, _Identified):
            return NotImplemented
        return hmac.compare_digest(self.identity(), other.identity())

    def __hash__(self) -> int:
        return hash(("wmkit-key", self.identity()))


@dataclass(frozen=True, eq=False)
class SecretKey(_Identified):
    """A watermark secret. Its repr never shows the key material.

    Args:
        secret: the raw key bytes (at least 16).
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes):
            raise InvalidKeyError("a secret key must be bytes")
        if len(self.secret) * 8 < MIN_BITS:
            raise InvalidKeyError(
                f"key has {len(self.secret) * 8} bits; at least {MIN_BITS} are required"
            )

    def __repr__(self) -> str:
        return f"SecretKey(<{len(self.secret) * 8} bits, id {self.fingerprint()}>)"

    def identity(self) -> str:
        """The full SHA-256 (hex) whose first 8 digits are :meth:`fingerprint`: what equality compares."""
        return hashlib.sha256(self.subkey("fingerprint")).hexdigest()

    @classmethod
    def from_hex(cls, text: str, source: str = "key") -> "SecretKey":
        """Parse a hexadecimal key (whitespace, ``#`` comment lines and a ``0x`` prefix allowed)."""
        lines = [ln.strip() for ln in text.splitlines()]
        body = "".join(ln for ln in lines if ln and not ln.startswith("#")).replace(" ", "")
        if body.lower().startswith("0x"):
            body = body[2:]
        if not body:
            raise InvalidKeyError(f"{source} is empty; expected a hexadecimal key (wm keygen -o FILE)")
        try:
            raw = bytes.fromhex(body)
        except ValueError:
            raise InvalidKeyError(f"{source} is not a hexadecimal key (wm keygen -o FILE makes one)") from None
        if len(raw) * 8 < MIN_BITS:
            raise InvalidKeyError(
                f"{source} has {len(raw) * 8} bits; at least {MIN_BITS} are required"
            )
        return cls(raw)

    @classmethod
    def generate(cls, bits: int = DEFAULT_BITS) -> "SecretKey":
        """A new random key from the operating system's CSPRNG."""
        if bits < MIN_BITS or bits % 8:
            raise InvalidKeyError(f"key size must be a multiple of 8 and at least {MIN_BITS} bits")
        return cls(secrets.token_bytes(bits // 8))

    def to_hex(self) -> str:
        """The key as lowercase hexadecimal text."""
        return self.secret.hex()

    def fingerprint(self) -> str:
        """A short public identifier of the key (first 8 hex digits of SHA-256 of a subkey)."""
        return self.identity()[:8]

    def commitment(self) -> str:
        """A public commitment to the key: SHA-256 over a domain tag and the secret (64 hex digits).

        Publish it before a dispute; revealing the key later proves it is the key committed to
        (``SecretKey.commitment() == published``), while the commitment alone reveals nothing usable
        about a random key of 128 or more bits.
        """
        return hashlib.sha256(b"wmkit/key-commitment/v1\x00" + self.secret).hexdigest()

    def subkey(self, label: str) -> bytes:
        """HMAC-SHA256(secret, ``"wmkit/v1/" + label``): 32 bytes for one use of the key."""
        return hmac.new(self.secret, f"{SUBKEY_LABEL}{label}".encode(), hashlib.sha256).digest()

    def prf_key(self, label: str) -> tuple[int, int, int, int]:
        """The PRF v2 key ``(k0, k1, d0, d1)`` for ``label`` (:mod:`wmkit.prf`): the first 16 bytes,
        little-endian words, of HMAC-SHA256(secret, ``"wmkit/v2/" + label``); 128 secret bits."""
        sub = hmac.new(self.secret, f"{PRF_LABEL}{label}".encode(), hashlib.sha256).digest()
        return tuple(int.from_bytes(sub[i : i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]

    def scoped(self, prf_labels: Sequence[str] = (), subkey_labels: Sequence[str] = ()) -> "ScopedKey":
        """A :class:`ScopedKey` holding only the named subkeys (and this key's public id)."""
        return ScopedKey({lb: self.prf_key(lb) for lb in prf_labels}, {lb: self.subkey(lb) for lb in subkey_labels},
                         self.identity())


@dataclass(frozen=True, eq=False)
class ScopedKey(_Identified):
    """The subkeys one scheme needs, without the master secret: what a worker on a shared cluster gets.

    It answers :meth:`prf_key` and :meth:`subkey` for the labels it was made with and refuses any
    other, so a Ray actor (whose arguments a cluster operator can read) never holds the key that
    derives every other scheme's subkeys, the commitment or the subkeys of other uses.

    >>> key = SecretKey.from_hex("00112233445566778899aabbccddeeff")
    >>> key.scoped(["text/kgw"]).prf_key("text/kgw") == key.prf_key("text/kgw")
    True
    """

    prf_keys: dict[str, tuple[int, int, int, int]] = field(repr=False)
    subkeys: dict[str, bytes] = field(repr=False)
    full_id: str

    def __repr__(self) -> str:
        return f"ScopedKey(<{len(self.prf_keys) + len(self.subkeys)} subkeys, id {self.fingerprint()}>)"

    def identity(self) -> str:
        """The full public digest of the key this scope came from (:meth:`SecretKey.identity`)."""
        return self.full_id

    def fingerprint(self) -> str:
        """The public id of the key this scope came from."""
        return self.full_id[:8]

    def prf_key(self, label: str) -> tuple[int, int, int, int]:
        """The PRF v2 key for ``label``, if this scope holds it."""
        if label not in self.prf_keys:
            raise InvalidKeyError(f"this scoped key holds no PRF key for {label!r}")
        return self.prf_keys[label]

    def subkey(self, label: str) -> bytes:
        """The byte subkey for ``label``, if this scope holds it."""
        if label not in self.subkeys:
            raise InvalidKeyError(f"this scoped key holds no subkey for {label!r}")
        return self.subkeys[label]

    def commitment(self) -> str:
        """Not available: a commitment needs the master secret."""
        raise InvalidKeyError("a scoped key has no commitment (it does not hold the master secret)")


# Public ids of keys from a small space (vLLM's integer keys, SynthID's explicit integer lists): a
# memory-hard KDF, so an id is never a cheaper path to the key than trying keys against marked text.
# scrypt N=2^17, r=8, p=2 takes 128 MiB and ~0.9 s of one core per evaluation (measured on the CI
# machine: benchmarks/key_id_cost.py), so trying 2^40 keys costs >3x10^4 CPU-years.
KDF_ID_PARAMS = {"n": 2**17, "r": 8, "p": 2}


@functools.lru_cache(maxsize=64)
def kdf_key_id(prefix: str, material: bytes) -> str:
    """``prefix:`` + 8 hex digits of scrypt(material) under a fixed public salt (:data:`KDF_ID_PARAMS`).

    Used for keys whose space is small enough to search (a vLLM key below 2^40 is): the id costs
    ~0.9 s to compute, once per key and process.
    """
    digest = hashlib.scrypt(material, salt=b"wmkit/key-id/v2/" + prefix.encode(), maxmem=2**30, dklen=16,
                            **KDF_ID_PARAMS)
    return f"{prefix}:{digest.hex()[:8]}"


def _world_writable(p: Path) -> bool:
    try:
        return bool(p.stat().st_mode & stat.S_IWOTH)
    except OSError:
        return False


def check_key_file_mode(p: Path) -> None:
    """Refuse a key file that is a symlink into a world-writable place (anyone could have planted or
    can replace what it points to); warn, as ssh does, when the file is readable by group or others.
    POSIX only (Windows has no such mode bits)."""
    if os.name != "posix":
        return
    if p.is_symlink():
        target = p.resolve()
        if _world_writable(target) or any(_world_writable(d) for d in target.parents):
            raise InvalidKeyError(f"key file {p} is a symlink into a world-writable place; refusing it "
                                  "(copy the key to a private file: wm keygen makes mode 0600)")
    try:
        mode = p.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(f"key file {p} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                      f"keep it private: chmod 600 {p}", KeyFileWarning, stacklevel=3)


def read_key_file(path: str | os.PathLike[str]) -> SecretKey:
    """Load a key from a text file, with a clear error if it is missing or malformed.

    The file holds one key line (blank and ``#`` lines aside); more than one is an error, since
    joining two keys would silently make a third. See :func:`check_key_file_mode` for its mode.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidKeyError(f"key file {p} does not exist (create one with: wm keygen -o {p})")
    if p.is_dir():
        raise InvalidKeyError(f"key file {p} is a directory")
    check_key_file_mode(p)
    try:
        text = p.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as e:
        raise InvalidKeyError(f"key file {p} is not readable hexadecimal text ({type(e).__name__})") from None
    if sum(1 for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")) > 1:
        raise InvalidKeyError(f"key file {p} holds more than one key line; a key file holds one key")
    return SecretKey.from_hex(text, source=f"key file {p}")


def load_key(
    key: SecretKey | str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
    env: str = ENV_VAR,
) -> SecretKey:
    """A wmkit key: explicit ``key``, else ``key_file``, else ``$WMKIT_KEY``; else an error (:func:`resolve`)."""
    if key is None and key_file is not None:
        key = Path(key_file)
    return resolve(key, "wmkit", env=env)


def parse_vllm_key(value: Any, source: str = "--vllm-key") -> int:
    """A vLLM watermark key: an integer in ``[0, 2^64)`` (decimal, or ``0x`` hex), as vLLM takes it."""
    if isinstance(value, bool):
        raise InvalidKeyError(f"{source}: a vLLM key is an integer in [0, 2**64), got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 32 and all(c in "0123456789abcdefABCDEF" for c in text):
            raise InvalidKeyError(f"{source} looks like a wmkit hex key; vLLM keys are integers (the 'key' of --watermark-config)")
        try:
            value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise InvalidKeyError(f"{source}: a vLLM key is an integer in [0, 2**64), got {len(text)} characters "
                                  "that are not one (the value is not shown: it may be a secret)") from None
    if not isinstance(value, int) or not 0 <= value <= MAX_VLLM_KEY:
        what = "an integer out of range" if isinstance(value, int) else f"a {type(value).__name__}"
        raise InvalidKeyError(f"{source}: a vLLM key is an integer in [0, 2**64) (vLLM's Philox keys are 64-bit), "
                              f"got {what} (the value is not shown: it may be a secret)")
    return value


def parse_int_keys(value: Any, source: str = "synthid") -> tuple[int, ...]:
    """transformers' explicit SynthID keys: a list of integers, or ``"654,400,836"`` from the command line."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        keys = tuple(int(str(k).strip()) for k in items)
    except (TypeError, ValueError):
        raise InputError(f"{source}: keys must be integers separated by commas (the value given is not shown: "
                              "it may be a secret)") from None
    if not keys or not all(-(2**63) <= k < 2**63 for k in keys):
        raise InputError(f"{source}: keys must be 1 or more integers that fit in int64")
    return keys


KeyReference = Any  # see resolve(): a key, a value, a path, None, or {"file": PATH} / {"env": NAME}


def _parse(value: Any, kind: str, source: str) -> Any:
    if kind == "vllm":
        return parse_vllm_key(value, source)
    if kind == "synthid" and (not isinstance(value, str) or "," in value):
        return parse_int_keys(value, source)
    if isinstance(value, bytes):
        return SecretKey(value)
    return SecretKey.from_hex(value, source=source)


def _read_file(path: Path, kind: str) -> Any:
    if kind == "vllm":  # a file holding vLLM's integer (the same privacy rules as a key file)
        check_key_file_mode(path)
        try:
            return parse_vllm_key(path.read_text(encoding="utf-8"), f"key file {path}")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidKeyError(f"key file {path}: cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    return read_key_file(path)


def resolve(reference: KeyReference = None, kind: str = "wmkit", *, base: str | os.PathLike[str] | None = None,
            env: str | None = None) -> Any:
    """The one key resolver: the key ``reference`` names, for a scheme taking ``kind`` of key.

    ``reference`` is a key object (:class:`SecretKey` or :class:`ScopedKey`: itself), a value (hex
    text or bytes for a wmkit key; an integer or its text for vLLM; integers or ``"a,b,c"`` for
    SynthID's explicit keys), a :class:`~pathlib.Path` to a key file, ``{"file": PATH}`` (relative to
    ``base``) or ``{"env": NAME}`` (a profiles file's forms), or ``None``: the environment variable
    ``env`` (default ``$WMKIT_KEY``, for vLLM ``$WMKIT_VLLM_KEY``). Returns a :class:`SecretKey`, an
    ``int`` (vLLM) or a tuple of ints (SynthID's explicit keys). Errors are one line and never show
    a value.
    """
    if kind not in KEY_KINDS:
        raise ValueError(f"kind must be one of {', '.join(KEY_KINDS)}, got {kind!r}")
    if isinstance(reference, (SecretKey, ScopedKey)):
        if kind == "vllm":
            raise InvalidKeyError("vLLM schemes take vLLM's integer key (--vllm-key N), not a wmkit key")
        return reference
    if isinstance(reference, dict):
        if set(reference) not in ({"file"}, {"env"}):
            raise InvalidKeyError("a key reference is {\"file\": PATH} or {\"env\": VARIABLE} (inline keys are refused)")
        if "file" in reference:
            path = Path(str(reference["file"]))
            return _read_file(path if path.is_absolute() or base is None else Path(base) / path, kind)
        name = str(reference["env"])
        if not os.environ.get(name):
            raise InvalidKeyError(f"environment variable {name} is not set")
        return _parse(os.environ[name], kind, f"${name}")
    if isinstance(reference, os.PathLike):
        return _read_file(Path(reference), kind)
    if reference is None:
        name = env or (VLLM_KEY_ENV if kind == "vllm" else ENV_VAR)
        if os.environ.get(name):
            return _parse(os.environ[name], kind, f"${name}")
        if kind == "vllm":
            raise InvalidKeyError(f"no vLLM key given: pass --vllm-key N or set {name} (the 'key' of vLLM's --watermark-config)")
        raise InvalidKeyError(f"no key given: pass --key-file FILE or set {name} (wm keygen -o FILE makes one)")
    return _parse(reference, kind, "--vllm-key" if kind == "vllm" else ("synthid keys" if kind == "synthid" else "key"))


def keyed_rng(key: SecretKey | ScopedKey, label: str) -> Any:
    """A numpy generator seeded by the subkey of ``label``: the same key gives the same draws."""
    import numpy as np

    return np.random.default_rng(int.from_bytes(key.subkey(label), "little"))


def write_key_file(path: str | os.PathLike[str], key: SecretKey) -> Path:
    """Write ``key`` to a new file with mode 0600; never overwrites an existing file."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        raise InvalidKeyError(f"directory {p.parent} does not exist")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidKeyError(f"{p} already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise InvalidKeyError(f"cannot create {p}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"# wmkit secret key ({len(key.secret) * 8} bits). Keep it private.\n")
        f.write(key.to_hex() + "\n")
    os.chmod(p, 0o600)
    return p


_C = TypeVar("_C", bound="KeyedConfig")


class KeyedConfig:
    """Mixin for a scheme that is a frozen dataclass with a ``key: SecretKey`` field and a ``name``.

    Gives every scheme family (text, embedding) the same JSON round-trip, which never contains
    key material: :meth:`config`, :meth:`to_json` and :meth:`from_config`.
    """

    name: ClassVar[str] = ""

    def config(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict, with ``scheme`` and without the key."""
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "key"}  # type: ignore[arg-type]
        return {"scheme": self.name, **params}

    def to_json(self) -> str:
        """:meth:`config` as JSON text."""
        return json.dumps(self.config(), sort_keys=True)

    def key_labels(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The labels of the PRF keys and byte subkeys this scheme derives from its key (what a
        :class:`ScopedKey` for it must hold). Schemes that derive more override it."""
        return (f"text/{self.name}",), ()

    def scoped(self: _C) -> _C:
        """This scheme with a :class:`ScopedKey` in place of its master key (an integer or explicit key
        list, which derives nothing, is kept as it is): what to hand a worker one may not trust."""
        import dataclasses

        key = getattr(self, "key", None)
        if not isinstance(key, SecretKey):
            return self
        return dataclasses.replace(self, key=key.scoped(*self.key_labels()))  # type: ignore[type-var]

    @classmethod
    def from_config(cls: type[_C], config: dict[str, Any], key: SecretKey) -> _C:
        """Rebuild a scheme from :meth:`config` output and a key; unknown fields are an error."""
        from .errors import InputError

        config = dict(config)
        if config.pop("scheme", cls.name) != cls.name:
            raise InputError(f"config is for scheme {config.get('scheme')!r}, not {cls.name!r}")
        allowed = {f.name for f in fields(cls)} - {"key"}  # type: ignore[arg-type]
        unknown = set(config) - allowed
        if unknown:
            raise InputError(f"{cls.name}: unknown parameter(s) {sorted(unknown)}")
        return cls(key=key, **config)  # type: ignore[call-arg]
