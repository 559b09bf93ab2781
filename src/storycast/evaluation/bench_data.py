"""The ConsiStory-Human benchmark files, fetched from the authors' repository and checked against checksums.

The benchmark is the ``bench/`` folder of the IdentityStory repository (``REPO`` at the pinned ``COMMIT``):
``bench/ConsiStory-Human-single`` (80 single-character stories), ``bench/ConsiStory-Human-multi-2`` and
``bench/ConsiStory-Human-multi-3`` (10 stories of two and of three characters). We store it under the split
names instead, ``single/``, ``multi-2/`` and ``multi-3/`` (the layout of ``shared/bench/ConsiStory-Human``), in
``<storycast cache>/bench/ConsiStory-Human`` by default, where ``storycast benchmark`` looks.

Every file is checked against ``CHECKSUMS`` (SHA-256 of its bytes at ``COMMIT``) before it is written, and
written atomically; files already in place with the right checksum are kept, so an interrupted download or copy
resumes where it stopped. A local copy (``source``) may use either layout, ours or the authors'.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from storycast.errors import SettingsError, StorycastError
from storycast.methods.base import ProgressCallback, ProgressEvent, no_progress
from storycast.utils.io import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)

NAME = "consistory-human"
"""The name of the download (``storycast download consistory-human``)."""
BENCH_NAME = "ConsiStory-Human"
REPO = "Correr-Zhou/IdentityStory"
COMMIT = "882cfd7c5cc4882ecc00238cdaa5ab7293eae7f5"
SPLITS = ("single", "multi-2", "multi-3")
REPO_FOLDERS = {split: f"bench/{BENCH_NAME}-{split}" for split in SPLITS}
"""Where each split lives in the authors' repository (our folder is the split name)."""
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
SHOWN = 12
"""File names listed in an error message before '... and N more'."""


class BenchDataError(StorycastError):
    """Benchmark files could not be fetched, or do not match their checksums."""


@dataclass
class InstallResult:
    """What :func:`install` did.

    Attributes:
        target: The benchmark folder (holding ``single/``, ``multi-2/``, ...).
        written: Files fetched or copied now (paths relative to ``target``).
        kept: Files already in place with the right checksum.
    """

    target: Path
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def default_target(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/bench/ConsiStory-Human``, the cache being ``cache_dir`` or storycast's (``$STORYCAST_CACHE``)."""
    from storycast.utils.environment import default_cache_dir

    return Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "bench" / BENCH_NAME


def repo_path(path: str) -> str:
    """The authors' path of one of our files: 'single/story_000.json' -> 'bench/ConsiStory-Human-single/story_000.json'."""
    split, _, name = path.partition("/")
    return f"{REPO_FOLDERS[split]}/{name}"


def raw_url(path: str, commit: str = COMMIT) -> str:
    """The download address of one of our files at ``commit``."""
    return RAW_URL.format(repo=REPO, commit=commit, path=repo_path(path))


def checksum_table(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every story file of a benchmark folder in our layout (``split/story_NNN.json``): how
    ``CHECKSUMS`` was made, and how tests build a table for a folder of their own."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.glob("*/*.json"))}


def select_splits(splits: Iterable[str] | None, checksums: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``checksums`` that belong to ``splits`` (every split when None).

    Raises:
        SettingsError: A split that is not known (with the closest name).
    """
    chosen = tuple(dict.fromkeys(splits)) if splits else SPLITS
    for split in chosen:
        if split not in SPLITS:
            close = difflib.get_close_matches(split, SPLITS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SettingsError(f"split '{split}' is not part of {BENCH_NAME}. Fix: {hint}use {', '.join(SPLITS)}.")
    return {path: digest for path, digest in checksums.items() if path.partition("/")[0] in chosen}


def _order(path: str) -> tuple[int, str]:
    split, _, name = path.partition("/")
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), name)


def _listed(paths: list[str], table: Mapping[str, str]) -> str:
    """'single/story_070.json, ..., multi-3/ (all 10)': whole splits by name, other files one by one."""
    parts: list[str] = []
    for split in dict.fromkeys(path.partition("/")[0] for path in paths):
        mine = [path for path in paths if path.partition("/")[0] == split]
        if len(mine) > 1 and len(mine) == sum(path.partition("/")[0] == split for path in table):
            parts.append(f"{split}/ (all {len(mine)})")
        else:
            parts.extend(mine)
    more = f" and {len(parts) - SHOWN} more" if len(parts) > SHOWN else ""
    return ", ".join(parts[:SHOWN]) + more


def _local_candidates(source: Path, path: str) -> list[Path]:
    """Where ``path`` may be in a local copy: our layout, the authors' ``bench/`` folder, or their checkout."""
    split, _, name = path.partition("/")
    return [source / path, source / f"{BENCH_NAME}-{split}" / name, source / repo_path(path)]


def check_target(target: Path) -> None:
    """Refuse a ``--to`` that is a file (or lies under one) before anything is fetched."""
    for folder in (target, *target.parents):
        if os.path.lexists(folder) and not folder.is_dir():
            raise SettingsError(
                f"--to '{target}' cannot be the benchmark folder: '{folder}' is a file. Fix: name a folder (new or "
                f"existing), e.g. --to {target.parent / (target.name + '-bench')}."
            )


def inside_target(target: Path, path: str) -> Path:
    """``target / path``, refused when a symbolic link inside ``target`` would send the write elsewhere (the
    folder itself may be a link: the user named it)."""
    destination = target / path
    for part in (*reversed(destination.relative_to(target).parents[:-1]), Path(path)):
        if (target / part).is_symlink():
            raise SettingsError(
                f"'{target / part}' is a symbolic link inside the benchmark folder; storycast does not write through "
                f"it (the files would land outside '{target}'). Fix: remove the link, or pass --to a folder "
                f"without links inside."
            )
    return destination


def download_bytes(url: str, timeout: float = 60.0) -> bytes:
    """The body at ``url``.

    Raises:
        BenchDataError: The URL cannot be fetched (the message names it and the ``--from`` fix).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise BenchDataError(
            f"could not download '{url}' ({getattr(err, 'reason', None) or err}). Fix: run the same command again "
            f"where GitHub is reachable (files already fetched are kept), or copy the bench/ folder of {REPO} at "
            f"commit {COMMIT} here and pass --from FOLDER."
        ) from None


def install(
    target: str | Path,
    *,
    source: str | Path | None = None,
    splits: Iterable[str] | None = None,
    checksums: Mapping[str, str] | None = None,
    fetch: Callable[[str], bytes] | None = None,
    progress: ProgressCallback = no_progress,
) -> InstallResult:
    """Put the benchmark files into ``target`` (``target/<split>/story_NNN.json``), each checked first.

    Args:
        target: The benchmark folder to fill (``default_target()`` is where ``storycast benchmark`` looks).
        source: A local copy to take the files from instead of downloading them (either layout).
        splits: Only these splits (default: all of ``SPLITS``).
        checksums: Relative path -> SHA-256 of every file (default ``CHECKSUMS``, the files at ``COMMIT``).
        fetch: Returns the bytes at a URL (default :func:`download_bytes`); used when ``source`` is None.
        progress: Receives a 'files' event per file checked.

    Raises:
        BenchDataError: A file could not be fetched, or does not match its checksum, or is missing from
            ``source``. Files that passed are kept in ``target`` either way, so the same call resumes.
        SettingsError: An unknown split, or a ``source`` that is not a folder.
    """
    table = select_splits(splits, CHECKSUMS if checksums is None else checksums)
    target = Path(target).expanduser()
    if source is not None:
        source = Path(source).expanduser()
        if not source.is_dir():
            raise SettingsError(
                f"--from '{source}' is not a folder. Fix: pass the {BENCH_NAME} folder (holding single/, multi-2/, "
                f"multi-3/) or the bench/ folder of a {REPO} checkout."
            )
    check_target(target)
    fetch = fetch or download_bytes
    result = InstallResult(target=target)
    missing: list[str] = []
    damaged: list[str] = []
    paths = sorted(table, key=_order)
    progress(ProgressEvent("files", 0, len(paths), BENCH_NAME))
    for number, path in enumerate(paths, start=1):
        expected = table[path]
        destination = inside_target(target, path)
        if destination.is_file():
            if sha256_file(destination) == expected:
                result.kept.append(path)
                progress(ProgressEvent("files", number, len(paths), BENCH_NAME))
                continue
            logger.warning("%s does not match its checksum; fetching it again", destination)
        if source is None:
            origin = raw_url(path)
            data = fetch(origin)
            digest = hashlib.sha256(data).hexdigest()
        else:
            found = next((p for p in _local_candidates(source, path) if p.is_file()), None)
            if found is None:
                missing.append(path)
                progress(ProgressEvent("files", number, len(paths), BENCH_NAME))
                continue
            # Hashed in chunks first: a file of the wrong size (a 3 GiB file named like a story) is never held whole.
            origin, digest = str(found), sha256_file(found)
            data = found.read_bytes() if digest == expected else b""
        if digest != expected:
            logger.error("%s: SHA-256 %s, expected %s", origin, digest, expected)
            damaged.append(path)
        else:
            atomic_write_bytes(destination, data)
            result.written.append(path)
        progress(ProgressEvent("files", number, len(paths), BENCH_NAME))
    problems = []
    if damaged:
        where = f"in '{source}'" if source is not None else f"downloaded from {REPO}@{COMMIT[:7]}"
        problems.append(
            f"{len(damaged)} file(s) {where} do not match their SHA-256 checksum and were refused: {_listed(damaged, table)}"
        )
    if missing:
        problems.append(f"{len(missing)} file(s) are not in '{source}': {_listed(missing, table)}")
    if problems:
        kept = len(result.written) + len(result.kept)
        fix = (
            f"take them from {REPO} at commit {COMMIT} (`storycast download {NAME}` without --from fetches just "
            f"those where GitHub is reachable, keeping the {kept} good file(s) already in '{target}'), or name only "
            f"the complete splits with --split"
        )
        if missing and len(missing) == len(table) and not damaged:
            fix = f"pass the {BENCH_NAME} folder itself (holding single/, multi-2/, multi-3/), or the repository's bench/"
        raise BenchDataError("; ".join(problems) + f". Fix: {fix}.")
    return result


def split_files(
    folder: str | Path, split: str, checksums: Mapping[str, str] | None = None, first: int | None = None
) -> tuple[int, int]:
    """(files present, files expected) of ``split`` in a benchmark folder, or of its ``first`` stories only (what
    ``--limit`` asks for): equal when those files are all there."""
    folder = Path(folder)
    table = CHECKSUMS if checksums is None else checksums
    expected = sorted((path for path in table if path.partition("/")[0] == split), key=_order)[:first]
    return sum((folder / path).is_file() for path in expected), len(expected)


CHECKSUMS: dict[str, str] = {
    # From shared/bench/ConsiStory-Human (single 000-069, multi-2), a verbatim copy of REPO at COMMIT.
    "single/story_000.json": "cf67cfd0bad7a0a8f005af50cd6ebd641a88e2e91c81b8f2ab0b9f80960f7044",
    "single/story_001.json": "4c1d72c739a942ce9c3b070a4c2b3abdde002678eade1a0358ae30c44491482a",
    "single/story_002.json": "9e7e1b5f8ec6a3b4a28d08b60a4e66b9d4ad4e00c3db550744f65f2f7d0ba180",
    "single/story_003.json": "1ef4ecca5871e1fe6bb287ad5f568a180cbf52e3b313df1b3c6ecff5478264e1",
    "single/story_004.json": "33c37156a79c989cbc9ad27b7b456e7b5e6f6bf736aa7d172f82908bb010c75d",
    "single/story_005.json": "6ab8ec4ff2a3bc68d7dd5073cab413b7d7292383af18e347d004284e1df65a63",
    "single/story_006.json": "fd339b1043b809cb72df7c7b18c220d7033824cbe45a9bace12c33e37fc990a1",
    "single/story_007.json": "6877bf81c485931ef548d92c108bcc417d59d3b57282917f30bc19d07616c75f",
    "single/story_008.json": "f94331694ac3c5d7b4116ae9ff19277f1feca14de08b1cabe5173f7453a2e991",
    "single/story_009.json": "31751eb51890e0c0b3926e468b0dc471df33fcb82b58caf723c1a09cd9786e9f",
    "single/story_010.json": "0a5728994523abd9a01200169d8eed0aaafa51f2fa3e4380d42f8252306a4ec8",
    "single/story_011.json": "43d2fbbb3d2efbf962a31155132798028fbd5bc1ed502219824480ac9575c09a",
    "single/story_012.json": "5bae6523203fd2c92aabf05c9cf69042a8d2bc30b5498114ff851d862aec3154",
    "single/story_013.json": "b10c9b58a7db10761d0268e72e5645d9aadb52d6fb79b43f07cce92076d026e4",
    "single/story_014.json": "177399682b042a6b34be8c059f63366160c681b5fb6c4afec3a9c8efe37d29ec",
    "single/story_015.json": "2ae08ca2add9bc39e00cd3dd21026b5fc907897b225588b534e54637aec722eb",
    "single/story_016.json": "8132cdaf53df33cc4f83a60d161fcb14666d0a91107d7734f72769d4e1c00005",
    "single/story_017.json": "448cb7c2b8dba4b05c4b9c0b7b0f77bc521d4634e98b4f0c52263110372c18d7",
    "single/story_018.json": "6277d03c0b0dccd9ffeee4587bd4f6c1c89039d5f7b8b6d371ad0f2e36ead18c",
    "single/story_019.json": "7ab804ec0b3e534be62bd931ad691b9b1be5293fd3f9aea1fee48a8957636992",
    "single/story_020.json": "901e54e90a050a4721ec1517a12fec3cf7bfd5fc6d09b08a36fc3812f3570a82",
    "single/story_021.json": "9faaf9468cc1b804ba4608fc0fd0cb82d7c29f474fc02c00377932e967a3090e",
    "single/story_022.json": "05bfe4b32e03efb0ce99179fbc9eba8e2790910baf1a725949e6bb0a961ae1c5",
    "single/story_023.json": "ea15bfa0f305e63cba97b228be3b7bce4437ce61e651da1f33a2194d8d4dbada",
    "single/story_024.json": "b8a2d3ab7ebe76d6bcb0ae30c79f32c9ead69ca277bb7865c65c8459d72da0f2",
    "single/story_025.json": "f7621bd1cfbc9ed0e088ea6352204f8699cc30c5f3142e289a4aba2a48048b68",
    "single/story_026.json": "1e6b181522f19947138a2e99946678cd6698ce96f24b8218df26c044872c1c55",
    "single/story_027.json": "8b06fd5bbe4909a206f6c8de851d5c739e23ca76e3723996fd2377bc2c75910a",
    "single/story_028.json": "ea52d7f1e6fdd4201da4160a320b5908ab99308c8d5f6ad11122ed7dfd018031",
    "single/story_029.json": "e773706bbe30631c0a759452826e44c81957ebe81a34a339dd42431e75433370",
    "single/story_030.json": "46421135dc3e346c73f3bbd9c0792a396124294c0604be8e3a4a0c17adea6a52",
    "single/story_031.json": "b8c09358c7c642eb24f16312498be34696a973239fb671f1c3e45af493cd1080",
    "single/story_032.json": "98dcd5aa11a500d4c1a795e361849c08dc217de97a26d4c23670c77618a3fe24",
    "single/story_033.json": "217fd7975d75bc3426a4d9364e5daa480c9340d889145ede5d3e31d152e0f05f",
    "single/story_034.json": "69d7cdf34cc4480e559405806fd09a3b372d65e027f88a2335835cd7b30ecf36",
    "single/story_035.json": "472f165349753302d7e6cdcc0564efc5c2e6479561619e30551997aa070fb056",
    "single/story_036.json": "20fd0bebf07e3f4033bc04550d101a1de1bd017185fc5b0afa2fff3a784703dd",
    "single/story_037.json": "3f8a92b9cee389121b02143b1bbccd155a6cf8747409886626c2ff339524bff9",
    "single/story_038.json": "e2b19150217de8e31bde3ce680dfb2e76eb0464afcd56899c2fa830dc74c0a67",
    "single/story_039.json": "76b43fe0d3ca52feadcf50f02f6d909ac54afc3785f819f15e2f73499f872f6c",
    "single/story_040.json": "3237005089d5d5b11542081cccb56ad548d150862b9c4c9d9e2dfb1f75af8384",
    "single/story_041.json": "21c07b1513820fcd90cc735b0055a3b9730a22784ec760d2289292fa7b247c03",
    "single/story_042.json": "01fc042aa94e23ac41dbb97c8ee7210a3069ce4670cbcf190f3e00fee11747fa",
    "single/story_043.json": "3b3edb8011d3e0ded16017976a2ee89a8ed385443760e0648faa6726f6a8dbf5",
    "single/story_044.json": "91aaff9f77ca52a188c8caff522582ba8ff826e9071a3425b9097f7acd18dcc3",
    "single/story_045.json": "6952ae96ecb6fadd032581c3c3b9d2195654a13ce055b098c4bc14309e7f0ed6",
    "single/story_046.json": "90200571120915c36a4e717548aa0727979fbdce97ab14ecb910ca1a20f9be84",
    "single/story_047.json": "0bd141c31e34025f70d04b222b8733326f1fde05e4075a4abed6c49f15bc0322",
    "single/story_048.json": "d7f09d88b86f0f33c63a204bfe727958233c5b6dc5a5e81499ffe83a21234b30",
    "single/story_049.json": "566d2740b10313d1fc6b424bea305059a708460b478361b69bc18459e02b4d8c",
    "single/story_050.json": "20ce3132f3e8224ebdf6ad6ca9bcd85714b5b008217eaefeda8e80a6e766d6e2",
    "single/story_051.json": "2a99eca732e6adec8422a0e3dc32fc369649fa82573b160c9b39e19619fe74ed",
    "single/story_052.json": "75b1c6c488e2280882cd9c31f8e4890f33f4ade10b6e3a498ddd7f3a177552ac",
    "single/story_053.json": "a0b9d23d3e896c04dc9377e93a86ef4d331c35bd1cb7760913db2e2ab05ed50e",
    "single/story_054.json": "1a8386c1f7ed8935cec9398b7cda3d3db3bc98ecac5d8f66d5dcfc2d47b5f6c5",
    "single/story_055.json": "5965e5359657e86e7fb79a470591b128286dcac87d21f9ecf0070250a286ccba",
    "single/story_056.json": "9263202764e7de19b8a186e6ccbe9be68f28f6837527c31f92cac04bfb4cd8ce",
    "single/story_057.json": "3fc1e8b4080a9726023b4a3a35606519ca188810d2b28fe7387142bd41770277",
    "single/story_058.json": "48c9dfb24bd99f17283cfa2cbe357ed75b2aeec92acacff7ae904b5f0863b06d",
    "single/story_059.json": "8a38785cd32a7c50fc14f13901b47a532300331e92160f313fdd0ce3b892cdcd",
    "single/story_060.json": "2510c2581aee3aaf51c24dad3f40c484e3fcdc02c2716eaa0fae346a9d04863d",
    "single/story_061.json": "1a92e13528715a0203bc5d7424b204de9fa107164a52c86728a9ceff4258f6cf",
    "single/story_062.json": "421d1368109c7264218471141b8cbd3a02ed786d162941e221e298703385617e",
    "single/story_063.json": "19873c8d470b1d491f35063b0fe981fa9cb774b29f6b3d6dfaa6b7d3633caf85",
    "single/story_064.json": "a76592065e447c7a03518e0df9fe2196643879ff5ae1e73b66d53dd7f90d1648",
    "single/story_065.json": "8ef16ec8d2b501c1e10ad33132b1068927afdc135402695fc2fd53e0490290fd",
    "single/story_066.json": "b614619ecac00c39f1f31e8a6a0e34096ccdc52a54faad4899a7766d778d017a",
    "single/story_067.json": "201d27a4be2de049c4677a546501537b678ee407d836f874b5e928bbd1d388e7",
    "single/story_068.json": "41001a2db1f495c322afe33677850ba91f6cc13e245b920069a375722f621670",
    "single/story_069.json": "d6146982c3a65211148aa9dce0e59d2b9982a52a60e0790aedb1413a0e947833",
    "multi-2/story_000.json": "8f0213c9925a8c91afde426eddf50f7652b8acf22225a033af04e6a19bcbcdbd",
    "multi-2/story_001.json": "f1d33a76d7d8ad5c258e2668e43579da9ed3f312988d1de73b1838de2334d015",
    "multi-2/story_002.json": "f3767b446e4869562746d26b23fa722b70b8f611f9526c1df9344679f0bb8992",
    "multi-2/story_003.json": "17bdcfd879e7ba9d7e4595e3baedd69f939874760b335ac1a4d6a611b437f6be",
    "multi-2/story_004.json": "b05f4d9f43c8500c989fc0d351442788a0bcb5080e2667bdc6f2fe66d3198cd0",
    "multi-2/story_005.json": "c401ed152aaeaccb6850919490828e28dfafb3cc886d1a72e4cd240d74322fab",
    "multi-2/story_006.json": "429cbeafa49776d27c471a2ea37fa12479a088a6cefb2eb8f88f997a126bcd00",
    "multi-2/story_007.json": "1581c33b80c0dfa7c68add34e77bda26bd083fea3981459b2b3a7dd99cca2e97",
    "multi-2/story_008.json": "24668b0eddb6064f420c3f0e3aae747fed08b74438fae7453c5672bbf1c32136",
    "multi-2/story_009.json": "da6c6a95bd94cffc189076381b1affcbd44c2bccbfdfb3b9e2b22cab4d2ad31e",
    # Not in shared/ (single 070-079, multi-3): computed from the files' text at COMMIT as GitHub serves it
    # (json.dumps(indent=4) layout and lengths checked); confirm with a first real download.
    "single/story_070.json": "8764824f3bcfde06c4a40f0bca0589d7ad6e56c3d376e17056167b0818d603a6",
    "single/story_071.json": "1fbf6669c94ce2ac776637d855fa0561ccd85ec895fb06f976048da781d5bf90",
    "single/story_072.json": "38da83b64678f2a199ab78965cadc4e0c876f4a3deb7ca67b2a6b73a9cf98b42",
    "single/story_073.json": "cb4775a75d6f1cf3bbe9a018ad77a97c9ff486b94635753a917d2af1978b032c",
    "single/story_074.json": "c9752a857f73a487c2fe6a741ca9d77f72a01be6d1da41f11d0ee98f91d8c73e",
    "single/story_075.json": "0071a3ceca645bdc26174d03ff7c9df8ff53fa57205e8536c5e99e86622d1e21",
    "single/story_076.json": "5089c53aba921a169f94d33b86ff82919d8cc9c08feeb65c4c05e059b018c2ce",
    "single/story_077.json": "f40201095dd60ae7e6e57eb6fc914cf9d7bdffa680131166ae3a895cac317c71",
    "single/story_078.json": "229165654005615e8d9b45d91196488773f4fbf92b50426fd9808e8187170416",
    "single/story_079.json": "3547ad0bbfbf1d9724a90ef94a521ae1ef3467406864e505757657f52d9fcb8a",
    "multi-3/story_000.json": "b9285db44fc327a0c9c8ead068d78dafcdce0088519ab366b6e6f5b95c1eaeb0",
    "multi-3/story_001.json": "5dc55f6a9dfc52fb233c1460112f335464e4ba3a496c5c4fd97a0e145542d2b5",
    "multi-3/story_002.json": "ebc42dea87f4014d114569dda574bd5e1fa68d78136d5b5221ea38ed8ee1998c",
    "multi-3/story_003.json": "4913c9e2bca896bab2332dbc1512bf1a5e768f3692192b96b1efea57e9e02779",
    "multi-3/story_004.json": "17cb988609db107fe4a6af3ded7af9709bf01e769730f35531f17a1cbbdea644",
    "multi-3/story_005.json": "a088079dd926da50d2c3d5b643469fe0e6dc1e24c2371386329f2cbfafe13828",
    "multi-3/story_006.json": "5adc1122c41da76cc5f71586d12b9a64560d44258d282cf9c32ea08f36e9de49",
    "multi-3/story_007.json": "5ac228a215ef4ba8acd94c8660e250eb8de2556ebb2e4809b8eaeb84c27197d0",
    "multi-3/story_008.json": "a6c3f1781394aca1a8be1a7764303fb4563bf7761de96c4e4712802fbb3c133c",
    "multi-3/story_009.json": "6bd0f7ca0b69653619af9991a5d57ec32fd0686f28b04264118762b597362197",
}
