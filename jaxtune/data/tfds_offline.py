"""Deciding at once whether a TFDS catalogue data set can be had, before TFDS is asked for it.

Asked for a data set that is not prepared in its ``data_dir``, TFDS downloads it -- and without a
network it retries each file for minutes before failing. :func:`check_obtainable` looks in the data
dirs first and, when the data set is absent, fails at once with the "prepare it once" hint if
``download`` is off, if the name is not in the TFDS catalogue, or if none of the hosts its download
URLs (TFDS's recorded checksums) name can be reached within a few seconds.

Example:
    >>> import tempfile
    >>> check_obtainable("made_up_data_set", "train", tempfile.mkdtemp(), download=True)
    Traceback (most recent call last):
    ...
    FileNotFoundError: TFDS data set 'made_up_data_set' (split 'train') is not prepared in ...
"""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

__all__ = ["check_obtainable", "not_prepared_message"]

_VERSION = re.compile(r"\d+\.\d+\.\d+")


def check_obtainable(name: str, split: str, data_dir: str | os.PathLike | None, download: bool) -> None:
    """Raises FileNotFoundError with the hint when ``name`` is absent from the (local) data dirs and
    TFDS could not prepare it here; returns when it is prepared, or may be downloaded.

    Example:
        >>> check_obtainable("mnist", "train", "/data/tfds", download=False)  # doctest: +SKIP
    """
    data_dirs = [os.fspath(d) for d in tfds.core.utils.file_utils.list_data_dirs(given_data_dir=data_dir)]
    if any("://" in d for d in data_dirs) or prepared_in(name, data_dirs):
        return
    reason = _why_not_obtainable(name, download)
    if reason:
        raise FileNotFoundError(not_prepared_message(name, split, data_dir, reason))


def not_prepared_message(name: str, split: str, data_dir: Any, reason: str) -> str:
    """The error message for an absent data set; ``reason`` follows the data dir."""
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (f"TFDS data set {name!r} (split {split!r}) is not prepared in {where}{reason}. Prepare it "
            f"once where there is internet: `tfds build {name} --file_format=array_record` (or "
            "tfds_source(..., download=True)), then point data_dir at it.")


def prepared_in(name: str, data_dirs: Sequence[str]) -> bool:
    """Whether a data dir holds ``name`` (``dataset[/config][:version]``) as TFDS lays it out:
    ``<data_dir>/<dataset>[/<config>]/<version>/dataset_info.json`` (a name without config may be
    prepared under its default config).

    Example:
        >>> prepared_in("glue/sst2:2.0.0", ["/data/tfds"])  # doctest: +SKIP
        True
    """
    base, _, version = name.partition(":")
    wanted = version if _VERSION.fullmatch(version) else None
    for data_dir in data_dirs:
        top = os.path.join(data_dir, *base.split("/"))
        for parent in [top] + [os.path.join(top, d) for d in _subdirectories(top)]:
            if any(_VERSION.fullmatch(v) and wanted in (None, v)
                   and os.path.isfile(os.path.join(parent, v, "dataset_info.json"))
                   for v in _subdirectories(parent)):
                return True
    return False


def _subdirectories(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    return [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]


def _why_not_obtainable(name: str, download: bool) -> str:
    """Why TFDS could not prepare an absent data set here, or "" when it may (then it tries)."""
    if not download:
        return " and download=False"
    base, _, after = name.partition(":")
    dataset = base.split("/")[0]
    if after and not re.fullmatch(r"[\d.*]+(/.*)?", after):  # a community namespace ("ns:dataset")
        return ""
    try:
        builder = tfds.builder_cls(dataset)
    except tfds.core.registered.DatasetNotFoundError:
        return (f", and {dataset!r} is not in the TFDS catalogue available here (misspelled, or its "
                "builder needs TensorFlow)")
    hosts = download_hosts(builder)
    if hosts and not any(reachable(h) for h in hosts):
        return f", and none of its download hosts ({', '.join(hosts)}) can be reached (no network?)"
    return ""


def download_hosts(builder_cls: Any) -> list[str]:
    """The hosts of a TFDS builder's recorded download URLs (empty when it records none).

    Example:
        >>> download_hosts(tfds.builder_cls("mnist"))  # doctest: +SKIP
        ['...']
    """
    try:
        urls = builder_cls.url_infos or {}
    except Exception:  # a builder without checksums: nothing to probe, TFDS decides
        return []
    return sorted({urllib.parse.urlsplit(u).hostname for u in urls} - {None})


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, name lookup included.

    Example:
        >>> reachable("localhost", port=1)
        False
    """
    opened = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)
