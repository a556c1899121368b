"""``qtasks dlq list|replay|drop``: the dead-letter stream, for people and scripts.

Dead letters are messages that will never run as they are: undecodable bytes, unknown task
names, unsupported schema versions, and tasks whose worker kept dying (crash loops). Each is
kept with its reason in the dead-letter stream (``[nats] dead_letter_stream``, kept for
``dead_letter_max_age_s``) and addressed by its sequence number there.

Replay republishes a letter to its queue and removes it from the dead-letter stream:

- by default under its original task id, after resetting the task's record to PENDING (the
  FAILURE stored when it was dead-lettered would make a worker skip it, and waiters on that
  id get the new outcome). The broker message id is ``<task id>:replay:<seq>``, not the task
  id: the stream drops a message id it has seen within ``duplicate_window_s`` (120 s), and
  the original publish may be that recent. Replaying the same letter twice within the window
  still publishes once.
- with ``--new-id``, as a new task with a fresh id (the old record is left as it was).

Either way ``eta`` and ``expires`` are cleared: a replay runs now.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from qtasks._fmt import confirm, shorten, table, to_json, when
from qtasks.app import QTasks
from qtasks.broker.base import DeadLetter
from qtasks.cli_ops import add_common
from qtasks.errors import DecodeError
from qtasks.message import (
    State,
    TaskResult,
    decode_message,
    encode_message,
    new_task_id,
    now_s,
)
from qtasks.progress import await_all

if TYPE_CHECKING:
    from qtasks.cli_ops import SubParsers


def add_parsers(sub: SubParsers) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="list, replay or drop dead-lettered messages",
        description=__doc__.split("\n\n", 1)[1].replace("``", "") if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)

    p = dsub.add_parser("list", help="show dead letters, oldest first")
    p.add_argument("-Q", "--queue", metavar="Q", help="only this queue's")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
    add_common(p)
    p.set_defaults(op=cmd_list)

    p = dsub.add_parser(
        "replay",
        help="send dead letters to their queue again",
        description="Republish dead letters to their queue and remove them from the "
        "dead-letter stream. Default: under the original task id, its record reset to "
        "PENDING; --new-id: as new tasks. Undecodable letters cannot be replayed.",
    )
    _selection(p)
    p.add_argument("--new-id", action="store_true", help="replay as new tasks with fresh ids")
    p.add_argument(
        "--wait", type=float, metavar="SECONDS",
        help="then wait up to SECONDS for the replayed tasks (a progress bar on a terminal)",
    )
    add_common(p)
    p.set_defaults(op=cmd_replay)

    p = dsub.add_parser("drop", help="delete dead letters for good")
    _selection(p)
    add_common(p)
    p.set_defaults(op=cmd_drop)


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="letters by sequence number")
    p.add_argument("--all", action="store_true", help="every letter (of --queue, if given)")
    p.add_argument("-Q", "--queue", metavar="Q", help="with --all: only this queue's")
    p.add_argument("--limit", type=int, default=10_000, metavar="N", help="with --all: at most N")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def describe(letter: DeadLetter) -> dict[str, Any]:
    """A letter as ``dlq list --json`` prints it (the message decoded when it can be)."""
    out: dict[str, Any] = {
        "seq": letter.seq,
        "queue": letter.queue,
        "reason": letter.reason,
        "dead_lettered_at": letter.time_s,
        "size": len(letter.data),
    }
    try:
        msg = decode_message(letter.data)
    except DecodeError:
        out.update(task_id=None, task=None, decodable=False)
    else:
        out.update(task_id=msg.id, task=msg.task, decodable=True, args=msg.args,
                   kwargs=msg.kwargs)
    return out


async def _selected(app: QTasks, args: argparse.Namespace) -> list[DeadLetter] | None:
    """The letters a replay/drop acts on; None (after a message) when there is nothing to do."""
    if not args.seqs and not args.all:
        print("qtasks: name letters by SEQ, or pass --all", file=sys.stderr)
        return None
    broker = await app.broker()
    letters = await broker.dead_letter_entries(args.queue, args.limit)
    if args.seqs:
        wanted = set(args.seqs)
        letters = [d for d in letters if d.seq in wanted]
        missing = wanted - {d.seq for d in letters}
        if missing:
            print(f"qtasks: no dead letter {', '.join(map(str, sorted(missing)))}",
                  file=sys.stderr)
    return letters


def _confirmed(args: argparse.Namespace, verb: str, n: int) -> bool:
    if args.yes or n == 0:
        return True
    if not sys.stdin.isatty():
        print(f"qtasks: refusing to {verb} without --yes (no terminal to confirm on)",
              file=sys.stderr)
        return False
    return confirm(f"{verb.capitalize()} {n} dead letter(s)?")


async def cmd_list(app: QTasks, args: argparse.Namespace) -> int:
    broker = await app.broker()
    letters = await broker.dead_letter_entries(args.queue, args.limit)
    rows = [describe(d) for d in letters]
    if args.json:
        print(to_json(rows))
        return 0
    if not rows:
        print("no dead letters")
        return 0
    print(table(
        ["SEQ", "QUEUE", "TASK ID", "TASK", "DEAD-LETTERED", "REASON"],
        [[r["seq"], r["queue"], r["task_id"] or f"(undecodable, {r['size']} bytes)",
          r["task"], when(r["dead_lettered_at"]), shorten(r["reason"], 70)] for r in rows],
        right=["SEQ"],
    ))
    return 0


async def replay(app: QTasks, letter: DeadLetter, *, new_id: bool) -> str:
    """Republish one letter (see the module docstring); returns the task id it runs under."""
    msg = decode_message(letter.data)
    broker, backend = await app.broker(), await app.backend()
    fresh = msgspec.structs.replace(msg, eta=None, expires=None, created_at=now_s())
    if new_id:
        fresh = msgspec.structs.replace(fresh, id=new_task_id())
        msg_id = fresh.id
    else:
        old = await backend.get(msg.id)
        meta = {k: v for k, v in (old.meta if old else {}).items() if k != "crashes"}
        meta["replays"] = int(meta.get("replays", 0)) + 1
        await backend.delete(msg.id)  # the FAILURE record (and any revoked mark)
        await backend.set(TaskResult(
            id=msg.id, state=State.PENDING, task=msg.task, queue=letter.queue,
            sent_at=fresh.created_at, meta=meta,
        ))
        msg_id = f"{msg.id}:replay:{letter.seq}"
    await broker.publish(letter.queue, encode_message(fresh), msg_id=msg_id)
    await broker.drop_dead_letter(letter.seq)
    return fresh.id


async def cmd_replay(app: QTasks, args: argparse.Namespace) -> int:
    letters = await _selected(app, args)
    if letters is None:
        return 2
    if args.all and not _confirmed(args, "replay", len(letters)):
        return 2
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for letter in letters:
        try:
            task_id = await replay(app, letter, new_id=args.new_id)
        except DecodeError as e:
            skipped.append({"seq": letter.seq, "reason": f"cannot replay: {e}"})
            continue
        done.append({"seq": letter.seq, "queue": letter.queue, "task_id": task_id})
    if args.wait is not None and done:
        results = [app.AsyncResult(d["task_id"]) for d in done]
        await await_all(results, args.wait, progress=None if not args.json else False,
                        desc="replayed")
        for d, r in zip(done, results, strict=True):
            d["state"] = (await r.astate()).value
    if args.json:
        print(to_json({"replayed": done, "skipped": skipped}))
    else:
        if done:
            cols = ["SEQ", "QUEUE", "TASK ID"] + (["STATE"] if args.wait is not None else [])
            print(table(cols, [[d["seq"], d["queue"], d["task_id"], d.get("state")][: len(cols)]
                               for d in done], right=["SEQ"]))
        for s in skipped:
            print(f"skipped {s['seq']}: {s['reason']}", file=sys.stderr)
        if not done and not skipped:
            print("nothing to replay")
    return 1 if skipped else 0


async def cmd_drop(app: QTasks, args: argparse.Namespace) -> int:
    letters = await _selected(app, args)
    if letters is None:
        return 2
    if not _confirmed(args, "drop", len(letters)):
        return 2
    broker = await app.broker()
    dropped = [d.seq for d in letters if await broker.drop_dead_letter(d.seq)]
    if args.json:
        print(to_json({"dropped": dropped}))
    else:
        print(f"dropped {len(dropped)} dead letter(s)" + (
            f": {', '.join(map(str, dropped))}" if dropped else ""))
    return 0
