"""The identity library: identities stored once, keyed by what determines them, reused across runs.

An identity is an ID embedding (a 1-D tensor) with a preview sheet and the settings that made it. Its key
is a hash of everything that determines it (description, class word, models, discovery settings, seed, or
the photos it was embedded from), so the same character in another story or run finds it again.

Layout: ``<root>/<key>/identity.safetensors`` (tensor ``identity``), ``preview.png``, ``info.json``. The
``sha256`` field of ``info.json`` holds the SHA-256 of the tensor's bytes and of the rest of ``info.json``;
entries written before it existed load without it, and get it when they are next stored.

An entry is written whole into a staging folder and swapped in by renames under an exclusive lock on
``<root>/.lock``; readers read it under a shared lock, so they see one whole entry or none (POSIX ``flock``;
where there is none the renames alone keep entries whole, but a read racing a replacement may miss it). A
damaged entry (unreadable, wrong shape, NaN, a changed byte) is reported, moved into
``<root>/.damaged/<key>-<UTC time>`` and treated as missing, so the next run discovers it again. A file in
the library folder's place is moved aside the same way, to ``<root>.damaged-<UTC time>`` beside it.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storycast.errors import StorycastError
from storycast.utils.io import file_lock, sha256_json

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

KEY_LENGTH = 24
TENSOR_FILE, INFO_FILE, PREVIEW_FILE = "identity.safetensors", "info.json", "preview.png"
TENSOR_NAME = "identity"
CHECKSUM_FIELD = "sha256"
LOCK_FILE, DAMAGED_FOLDER = ".lock", ".damaged"


class IdentityLibraryError(StorycastError):
    """The identity library folder cannot be used (it is a file, or cannot be read or written)."""


class InvalidIdentityError(IdentityLibraryError, ValueError):
    """An identity cannot be stored: it is empty or holds NaN or infinite values (it would draw black frames)."""


@dataclass
class IdentityRecord:
    """A stored identity.

    Attributes:
        key: The library key.
        embedding: The identity, a (D,) float32 tensor.
        info: What made it (character, settings, model, counts, timings), without the checksum.
        folder: Where it is stored.
        checksum: SHA-256 of the embedding's bytes, verified on reading; None for an entry written before
            checksums (it gets one when next stored).
    """

    key: str
    embedding: torch.Tensor
    info: dict[str, Any]
    folder: Path
    checksum: str | None = None

    @property
    def preview_path(self) -> Path | None:
        path = self.folder / PREVIEW_FILE
        return path if path.is_file() else None


@dataclass(frozen=True)
class DamagedEntry:
    """An entry that could not be used.

    Attributes:
        key: The entry's name in the library folder.
        problem: What is wrong with it.
        moved_to: Where it was moved aside (None when it could not be moved).
    """

    key: str
    problem: str
    moved_to: Path | None

    def describe(self) -> str:
        where = f"moved to {self.moved_to}" if self.moved_to else "could not be moved aside"
        return f"{self.problem} ({where}; the next run discovers it again)"


@dataclass
class LibraryContents:
    """What :meth:`IdentityLibrary.scan` found.

    Attributes:
        infos: The info of each good entry, by key.
        damaged: The damaged entries, each already moved aside.
    """

    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    damaged: list[DamagedEntry] = field(default_factory=list)


def identity_key(parts: Mapping[str, Any]) -> str:
    """Library key of an identity from everything that determines it (JSON-able values)."""
    return sha256_json(dict(parts))[:KEY_LENGTH]


class _Damaged(Exception):
    """Raised while reading an entry; the message says what is wrong."""


@dataclass
class _Entry:
    info: dict[str, Any]
    values: array.array  # the identity, float32 in native byte order
    checksum: str | None


class IdentityLibrary:
    """Identities on disk under ``root``: writes are atomic, reads see one whole entry, damage is set aside."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def keys(self) -> list[str]:
        """Names of the entries in the library (damaged ones included until they are read)."""
        if not self._root_exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Held while the identity ``key`` is made: another process that needs it waits, then finds it stored,
        so a character is discovered once however many processes draw it (a file lock in the library)."""
        from storycast.utils.io import file_lock

        self._make_root()
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with file_lock(locks / f"{key}.lock"):
            yield

    def info(self, key: str) -> dict[str, Any] | None:
        """What made a stored identity (its ``info.json``) without importing torch; None when absent or damaged."""
        entry = self._read(key)
        return entry.info if entry else None

    def get(self, key: str) -> IdentityRecord | None:
        """The stored identity, or None when it is absent or damaged (a damaged one is reported and set aside)."""
        entry = self._read(key)
        if entry is None:
            return None
        import torch

        embedding = torch.frombuffer(bytearray(entry.values.tobytes()), dtype=torch.float32)
        return IdentityRecord(key, embedding, entry.info, self.path(key), entry.checksum)

    def put(
        self, key: str, embedding: torch.Tensor, info: Mapping[str, Any], preview: Any | None = None
    ) -> IdentityRecord:
        """Store an identity, replacing one with the same key as a whole.

        Raises:
            InvalidIdentityError: The embedding is empty or not finite.
            IdentityLibraryError: The library folder is a file or cannot be written.
        """
        import torch
        from safetensors.torch import save

        _check_key(key)
        vector = embedding.detach().reshape(-1).to(device="cpu", dtype=torch.float32).contiguous()
        _check_finite(key, vector, info)
        # What get() will read back: the JSON form of info, our own fields last.
        record_info = json.loads(json.dumps({**info}, default=str))
        record_info = {"key": key, **{k: v for k, v in record_info.items() if k not in ("key", CHECKSUM_FIELD)}}
        tensor_bytes = save({TENSOR_NAME: vector})
        digest = hashlib.sha256(_tensor_data(tensor_bytes)).hexdigest()
        stored_info = {**record_info, CHECKSUM_FIELD: {"identity": digest, "info": sha256_json(record_info)}}

        self._make_root()
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".part", dir=self.root))
        try:
            _write_synced(staging / TENSOR_FILE, tensor_bytes)
            if preview is not None:
                preview.save(staging / PREVIEW_FILE)
            info_text = json.dumps(stored_info, indent=2, ensure_ascii=False, default=str) + "\n"
            _write_synced(staging / INFO_FILE, info_text.encode("utf-8"))
            with file_lock(self.root / LOCK_FILE):
                self._swap_in(staging, self.path(key))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return IdentityRecord(key, vector, record_info, self.path(key), digest)

    def remove(self, key: str) -> bool:
        """Forget an identity (the next run discovers it again); False when there was none."""
        _check_key(key)
        if not self._root_exists():
            return False
        with file_lock(self.root / LOCK_FILE):
            target = self.path(key)
            if not os.path.lexists(target):
                return False
            doomed = self.root / f".{key}.{uuid.uuid4().hex[:8]}.removed"
            os.rename(target, doomed)
        _delete(doomed)
        return True

    def scan(self) -> LibraryContents:
        """Every entry checked: the info of the good ones, and the damaged ones (moved aside, not logged)."""
        contents = LibraryContents()
        for key in self.keys():
            entry, damage = self._load(key)
            if damage is not None:
                contents.damaged.append(damage)
            elif entry is not None:
                contents.infos[key] = entry.info
        return contents

    # -- reading ------------------------------------------------------------------------------------

    def _read(self, key: str) -> _Entry | None:
        entry, damage = self._load(key)
        if damage is not None:
            logger.warning("identity %s in %s is damaged: %s", key, self.root, damage.describe())
        return entry

    def _load(self, key: str) -> tuple[_Entry | None, DamagedEntry | None]:
        """The entry read under a shared lock; if it looks damaged, read again under the exclusive lock (a
        writer may have been mid-swap where there is no lock) and moved aside if it still is."""
        _check_key(key)
        if not self._root_exists():
            return None, None
        lock = self.root / LOCK_FILE
        with file_lock(lock, shared=True):
            try:
                return _read_entry(self.path(key), key), None
            except _Damaged:
                pass
        with file_lock(lock):
            try:
                return _read_entry(self.path(key), key), None
            except _Damaged as damage:
                return None, DamagedEntry(key, str(damage), self._set_aside(key))

    def _set_aside(self, key: str) -> Path | None:
        """Move a damaged entry into ``.damaged/`` (call with the exclusive lock held)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = self.root / DAMAGED_FOLDER
        try:
            folder.mkdir(exist_ok=True)
            for attempt in range(100):
                destination = folder / (f"{key}-{stamp}" + (f"-{attempt}" if attempt else ""))
                if not os.path.lexists(destination):
                    os.rename(self.path(key), destination)
                    return destination
        except OSError as err:
            logger.debug("could not move %s into %s: %s", self.path(key), folder, err)
        return None

    # -- writing ------------------------------------------------------------------------------------

    def _swap_in(self, staging: Path, target: Path) -> None:
        """Replace ``target`` by ``staging`` (call with the exclusive lock held): the old entry is renamed
        away first, so a crash between the two renames leaves the key missing, never half written."""
        old = None
        if os.path.lexists(target):
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            if old is not None:
                os.rename(old, target)
            raise
        if old is not None:
            _delete(old)

    # -- the library folder -------------------------------------------------------------------------

    def _root_exists(self) -> bool:
        """Whether the library folder exists. Something else in its place (a file, a dangling link) is damage like
        a damaged entry: it is reported and moved aside beside it (``<root>.damaged-<UTC time>``, never deleted),
        and the library starts again empty."""
        try:
            if stat.S_ISDIR(os.stat(self.root).st_mode):
                return True
        except (FileNotFoundError, NotADirectoryError):
            pass
        # Look again without following links: another process may have made the folder since the first look, and
        # a folder it just made is not damage (moving it aside would lose what that process is writing).
        try:
            mode = os.lstat(self.root).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISDIR(mode):
            return True
        self._set_root_aside()
        return False

    def _set_root_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for attempt in range(100):
            destination = self.root.with_name(f"{self.root.name}.damaged-{stamp}" + (f"-{attempt}" if attempt else ""))
            if os.path.lexists(destination):
                continue
            try:
                os.rename(self.root, destination)
            except FileNotFoundError:  # another process moved it first
                return
            except OSError as err:
                break_reason = err
                break
            logger.warning(
                "the identity library %s was a file, not a folder: moved aside to %s; identities are discovered "
                "again and stored in a new folder",
                self.root,
                destination,
            )
            return
        else:
            break_reason = "no free name"
        raise IdentityLibraryError(
            f"the identity library {self.root} is a file, not a folder, and it cannot be moved aside "
            f"({break_reason}). Fix: move it away or delete it (rm '{self.root}'); storycast makes the folder again."
        )

    def _make_root(self) -> None:
        if self._root_exists():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise IdentityLibraryError(
                f"cannot create the identity library {self.root}: {err}. Fix: make sure its parent is a folder "
                f"you can write, or point --cache-dir (or $STORYCAST_CACHE) elsewhere."
            ) from err


def _check_key(key: str) -> None:
    if not key or key.startswith(".") or "/" in key or "\\" in key or key != key.strip():
        raise ValueError(f"{key!r} is not an identity key (a name such as identity_key() returns)")


def _check_finite(key: str, vector: torch.Tensor, info: Mapping[str, Any]) -> None:
    import torch

    who = f"identity {key}" + (f" ('{info['character']}')" if "character" in info else "")
    if vector.numel() == 0:
        raise InvalidIdentityError(f"{who} is empty; it cannot be stored. Fix: check what produced it.")
    bad = int((~torch.isfinite(vector)).sum())
    if bad:
        raise InvalidIdentityError(
            f"{who} has {bad} NaN or infinite values of {vector.numel()}; it would draw black frames, so it is not "
            f"stored. Fix: run in float32 (--dtype float32), where float16 overflows, or discover it again."
        )


def _read_entry(folder: Path, key: str) -> _Entry | None:
    """The entry in ``folder`` checked whole, None when absent; raises _Damaged saying what is wrong."""
    if not os.path.lexists(folder):
        return None
    if not folder.is_dir():
        raise _Damaged(f"{folder.name} is a file, not an identity folder")
    tensor_bytes, info_bytes = _read_file(folder / TENSOR_FILE), _read_file(folder / INFO_FILE)
    if tensor_bytes is None and info_bytes is None:
        raise _Damaged(f"the folder has neither {TENSOR_FILE} nor {INFO_FILE}")
    if tensor_bytes is None or info_bytes is None:
        raise _Damaged(f"{TENSOR_FILE if tensor_bytes is None else INFO_FILE} is missing")
    info = _parse_info(info_bytes, key)
    data = _tensor_data(tensor_bytes)
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    bad = sum(1 for v in values if not math.isfinite(v))
    if bad:
        raise _Damaged(f"the identity has {bad} NaN or infinite values of {len(values)} (it would draw black frames)")
    checksum = info.pop(CHECKSUM_FIELD, None)
    if checksum is None:
        return _Entry(info, values, None)
    if not (isinstance(checksum, dict) and all(isinstance(checksum.get(f), str) for f in ("identity", "info"))):
        raise _Damaged(f"the '{CHECKSUM_FIELD}' field of {INFO_FILE} is unreadable")
    if sha256_json(info) != checksum["info"]:
        raise _Damaged(f"{INFO_FILE} does not match its SHA-256 (a changed byte)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != checksum["identity"]:
        raise _Damaged(f"{TENSOR_FILE} does not match its SHA-256 (a changed byte, or another writer's info)")
    return _Entry(info, values, digest)


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError) as err:
        raise _Damaged(f"{path.name} is not a file") from err
    except PermissionError as err:
        raise IdentityLibraryError(f"cannot read {path}: {err}. Fix: make the identity library readable.") from err


def _parse_info(data: bytes, key: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Damaged(f"{INFO_FILE} is not text (binary data)") from err
    if not text.strip():
        raise _Damaged(f"{INFO_FILE} is empty")
    try:
        info = json.loads(text)
    except ValueError as err:
        raise _Damaged(f"{INFO_FILE} is not valid JSON ({err})") from err
    if not isinstance(info, dict):
        raise _Damaged(f"{INFO_FILE} holds a JSON {type(info).__name__}, not an object")
    if info.get("key", key) != key:
        raise _Damaged(f"{INFO_FILE} belongs to identity {info['key']!r}")
    return info


def _tensor_data(data: bytes) -> bytes:
    """The bytes of the ``identity`` tensor in a safetensors file, checked to be a non-empty float32 (D,)."""
    if len(data) < 8:
        raise _Damaged(f"{TENSOR_FILE} is truncated ({len(data)} bytes)")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > len(data) - 8:
        raise _Damaged(f"{TENSOR_FILE} is truncated or not a safetensors file")
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError is a ValueError
        raise _Damaged(f"{TENSOR_FILE} is not a safetensors file (unreadable header)") from err
    spec = header.get(TENSOR_NAME) if isinstance(header, dict) else None
    if not isinstance(spec, dict):
        names = sorted(k for k in header if k != "__metadata__") if isinstance(header, dict) else []
        raise _Damaged(f"{TENSOR_FILE} has no tensor '{TENSOR_NAME}' (it has {names})")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if dtype != "F32":
        raise _Damaged(f"the identity is {dtype}, not F32 (float32)")
    if not (isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0):
        raise _Damaged(f"the identity has shape {shape}, not [D] with D > 0")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and offsets[0] >= 0
        and offsets[1] - offsets[0] == 4 * shape[0]
    ):
        raise _Damaged(f"{TENSOR_FILE} has data offsets {offsets} that do not fit shape {shape}")
    start, end = 8 + header_size + offsets[0], 8 + header_size + offsets[1]
    if end > len(data):
        raise _Damaged(f"{TENSOR_FILE} is truncated ({len(data)} of {end} bytes)")
    return data[start:end]


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
