"""Run as a subprocess by test_crash.py: appends through the real sequencer until killed (to the SQLite log
in DATA, or to the PostgreSQL database given as a third argument).

Prints ``ack <index> <leaf hash hex>`` for every acknowledged entry, and
``checkpoint <base64 note>`` for each new checkpoint handed out, flushing each
line only after the sequencer resolved it (i.e. after the durable commit).
"""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path

from pacspace.datadir import WriteLock, load_signer, load_state, open_log
from pacspace.sequencer import Sequencer, SequencerConfig


async def main(data: Path, round_no: int, database: str | None) -> None:
    lock = WriteLock(data)
    signer = load_signer(data)
    store = open_log(data, database)
    state = load_state(store, signer)
    sequencer = Sequencer(store, signer, state, SequencerConfig(pool_interval=0.005, batch_size=512))
    task = asyncio.create_task(sequencer.run())
    out = sys.stdout
    out.write(f"ready {state.size}\n")
    out.flush()
    seen = -1

    async def worker(w: int) -> None:
        nonlocal seen
        i = 0
        while True:
            burst = [b"round %d worker %d entry %d" % (round_no, w, i + k) for k in range(1 + (i % 7))]
            i += len(burst)
            results = await sequencer.submit_many(burst)
            lines = [f"ack {r.index} {r.leaf_hash.hex()}\n" for r in results]
            checkpoint = results[-1].checkpoint
            if checkpoint.size > seen:
                seen = checkpoint.size
                lines.append("checkpoint " + base64.b64encode(checkpoint.format()).decode() + "\n")
            out.write("".join(lines))
            out.flush()

    await asyncio.gather(task, *(worker(w) for w in range(32)))
    lock.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
