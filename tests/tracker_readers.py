"""Readers of what a tracker stored, for the tracker tests: W&B's offline run log."""

from __future__ import annotations

import glob
import struct
import time
from pathlib import Path
from typing import Any

from miniplaces.rundir import RunDir


def wandb_records(run: RunDir) -> list[Any]:
    """The records of the offline W&B run log (its LevelDB-style format: 7-byte header, 32 KiB blocks of
    chunks, each a masked CRC, a length, a type and part of one protobuf `Record`)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run.path / "wandb" / "offline-run-*" / "run-*.wandb"))
    data, pos, block, pending, out = Path(path).read_bytes(), 7, 32768, b"", []
    # W&B's own process writes the log; `finish()` may return before it has written all of it.
    deadline = time.monotonic() + 60
    while len(data) <= 7 and time.monotonic() < deadline:
        time.sleep(0.2)
        data = Path(path).read_bytes()
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            pos += left - 7 - length
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    if out[-1:] and out[-1].WhichOneof("record_type") != "exit" and time.monotonic() < deadline:
        time.sleep(0.5)
        return wandb_records(run)
    return out
