"""Operator commands: ``qtasks status``, ``inspect``, ``purge``, ``revoke`` (``dlq`` is in
:mod:`qtasks.cli_dlq`).

Each command reads its settings from config.toml and ``QTASKS_*`` variables (or the file in
``--config``), or, with ``-A module:app``, uses that app's settings and connections. Tables
for people, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from qtasks._fmt import confirm, pairs, seconds, shorten, table, to_json, uptime, when
from qtasks.app import QTasks, load_app
from qtasks.config import load_settings
from qtasks.control import ask_workers
from qtasks.message import State, TaskResult
from qtasks.progress import await_all

Command = Callable[[QTasks, argparse.Namespace], Awaitable[int]]
if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_common(p: argparse.ArgumentParser, *, json: bool = True) -> None:
    """-A / --config (exclusive) and --json."""
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "-A",
        "--app",
        metavar="MODULE[:ATTR]",
        help="take settings and connections from this QTasks app (default: config.toml "
        "and QTASKS_* variables)",
    )
    src.add_argument(
        "--config", metavar="PATH", help="config.toml to read instead of ./config.toml"
    )
    if json:
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def ops_app(args: argparse.Namespace) -> QTasks:
    """The app a command talks through: ``-A``'s, or one made from the settings."""
    if getattr(args, "app", None):
        return load_app(args.app)
    return QTasks("qtasks-cli", settings=load_settings(getattr(args, "config", None)))


def add_parsers(sub: SubParsers) -> None:
    p = sub.add_parser(
        "status",
        help="show a task's state, timings, and result or error",
        description="State, timings (sent, started, finished, queued, ran), attempts, worker "
        "and executor of tasks, and the result or error. Exit status 1 when a task has no "
        "record (never sent, not yet picked up by a non-API sender, or expired).",
    )
    p.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="first wait up to SECONDS for the tasks to finish (a progress bar on a terminal)",
    )
    p.add_argument("--traceback", action="store_true", help="show a failed task's traceback")
    p.add_argument("--full", action="store_true", help="do not shorten the result")
    add_common(p)
    p.set_defaults(op=cmd_status)

    p = sub.add_parser(
        "inspect",
        help="show queues (pending, ack-pending, redelivered, dead letters) and live workers",
        description="Per queue, from its JetStream consumer: messages pending (not yet "
        "delivered), ack-pending (delivered, running or awaiting redelivery), redelivered, "
        "open pull requests (idle worker slots) and dead letters; then the workers that "
        "answer a ping: queues, executor, slots, tasks in flight.",
    )
    p.add_argument("-Q", "--queue", action="append", metavar="Q", help="only this queue (repeat)")
    p.add_argument(
        "--timeout", type=float, default=1.0, metavar="SECONDS",
        help="how long to collect worker answers (default 1)",
    )
    add_common(p)
    p.set_defaults(op=cmd_inspect)

    p = sub.add_parser(
        "purge",
        help="delete every message of a queue",
        description="Delete the messages of queues from the stream: waiting ones and ones "
        "being run (their runs finish, their acks then find nothing). Results already stored "
        "stay; a purged task's record stays as it was (PENDING for API submissions) until "
        "its TTL. Asks for confirmation unless --yes.",
    )
    p.add_argument(
        "-Q", "--queue", action="append", metavar="Q",
        help="queue to purge (repeat; default: the configured worker queues)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_common(p)
    p.set_defaults(op=cmd_purge)

    p = sub.add_parser(
        "revoke",
        help="cancel tasks (REVOKED): never run if not started, stopped if running",
        description="Mark tasks REVOKED unless they already finished. A task not started is "
        "never run. A running one is killed in the process executor (its child is replaced), "
        "cancelled at its next await in the asyncio executor, and left to finish with its "
        "result discarded in the thread executor; its state stays REVOKED.",
    )
    p.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    p.add_argument(
        "--no-terminate", action="store_true",
        help="do not stop a running task; only discard its result",
    )
    add_common(p)
    p.set_defaults(op=cmd_revoke)


# -- status ----------------------------------------------------------------------------------
def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(max(0.0, b - a), 6)


def status_record(task_id: str, info: TaskResult | None) -> dict[str, Any]:
    """What ``status --json`` prints for one task."""
    if info is None:
        return {"task_id": task_id, "state": State.PENDING.value, "known": False}
    host, _, pid = (info.worker or "").rpartition(":")
    return {
        "task_id": info.id,
        "known": True,
        "state": info.state.value,
        "task": info.task,
        "queue": info.queue,
        "worker": info.worker,
        "hostname": host or None,
        "pid": int(pid) if pid.isdigit() else None,
        "executor": info.executor,
        "attempts": info.deliveries,
        "retries": info.retries,
        "sent_at": info.sent_at,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "queued_s": _diff(info.sent_at, info.started_at),
        "run_s": _diff(info.started_at, info.finished_at),
        "result": info.result if info.state is State.SUCCESS else None,
        "error": None
        if info.error is None
        else {"type": info.error.type, "message": info.error.message,
              "traceback": info.error.traceback},
        "meta": info.meta,
    }


def _result_lines(result: Any, full: bool) -> list[tuple[str, Any]]:
    import json

    limit = 10**9 if full else 100
    if isinstance(result, dict):
        return [
            (f"  {k}", shorten(json.dumps(v, default=str), limit))
            for k, v in sorted(result.items())
        ]
    return [("result", shorten(json.dumps(result, default=str), limit))]


def _stamp(t: float | None, what: str, duration_s: float | None) -> str | None:
    if not t:
        return None
    return f"{when(t)}  ({what} {seconds(duration_s)})" if duration_s is not None else when(t)


def _one_status(rec: dict[str, Any], args: argparse.Namespace) -> str:
    if not rec["known"]:
        return pairs([("task id", rec["task_id"]),
                      ("state", "PENDING (no record: unknown id, not started yet, or expired)")])
    items: list[tuple[str, Any]] = [
        ("task id", rec["task_id"]),
        ("state", rec["state"]),
        ("task", rec["task"]),
        ("queue", rec["queue"]),
        ("worker", rec["worker"] and f"{rec['worker']} (host {rec['hostname']}, pid {rec['pid']})"),
        ("executor", rec["executor"]),
        ("attempts", f"{rec['attempts']} deliveries, {rec['retries']} retries"),
        ("sent", when(rec["sent_at"])),
        ("started", _stamp(rec["started_at"], "queued", rec["queued_s"])),
        ("finished", _stamp(rec["finished_at"], "ran", rec["run_s"])),
    ]
    if rec["state"] == State.SUCCESS.value:
        if isinstance(rec["result"], dict):
            items.append(("result", ""))
        items.extend(_result_lines(rec["result"], args.full))
    if rec["error"]:
        items.append(("error", f"{rec['error']['type']}: {rec['error']['message']}"))
    meta = {
        k: v for k, v in (rec["meta"] or {}).items() if k != "owner" and (k, v) != ("crashes", 0)
    }
    if meta:
        items.append(("meta", ", ".join(f"{k}={v}" for k, v in sorted(meta.items()))))
    text = pairs([(k, v) for k, v in items if v is not None])
    if args.traceback and rec["error"] and rec["error"]["traceback"]:
        text += "\n\n" + rec["error"]["traceback"].rstrip()
    return text


async def cmd_status(app: QTasks, args: argparse.Namespace) -> int:
    results = [app.AsyncResult(t) for t in args.task_ids]
    if args.wait is not None:
        await await_all(results, args.wait, progress=None if not args.json else False)
    records = [status_record(r.id, await r.ainfo()) for r in results]
    if args.json:
        print(to_json(records if len(records) > 1 else records[0]))
    elif len(records) == 1:
        print(_one_status(records[0], args))
    else:
        rows = [
            [r["task_id"], r["state"], r.get("task"), r.get("worker"),
             seconds(r.get("queued_s")), seconds(r.get("run_s")),
             r["error"]["type"] if r.get("error") else None]
            for r in records
        ]
        print(table(["TASK ID", "STATE", "TASK", "WORKER", "QUEUED", "RAN", "ERROR"], rows))
    return 0 if all(r["known"] for r in records) else 1


# -- inspect -----------------------------------------------------------------------------------
async def cmd_inspect(app: QTasks, args: argparse.Namespace) -> int:
    broker = await app.broker()
    queues = args.queue or sorted(
        set(await broker.queue_names()) | set(app.settings.worker.queues)
    )
    stats = [await broker.queue_stats(q) for q in queues]
    workers = await ask_workers(app, args.timeout)
    nats = app.settings.nats
    if args.json:
        print(to_json({
            "stream": nats.stream,
            "dead_letter_stream": nats.dead_letter_stream,
            "queues": stats,
            "workers": workers,
        }))
        return 0
    print(f"stream {nats.stream} (subjects {nats.subject_prefix}.<queue>), "
          f"dead letters in {nats.dead_letter_stream}\n")
    cols = ["QUEUE", "PENDING", "ACK-PENDING", "REDELIVERED", "WAITING-PULLS", "DEAD-LETTERS"]
    print(table(
        cols,
        [[s.queue, s.pending, s.ack_pending, s.redelivered, s.waiting_pulls, s.dead_letters]
         for s in stats],
        right=cols[1:],
    ))
    print()
    if not workers:
        print(f"no worker answered within {args.timeout:g} s")
        return 0
    now = time.time()
    wcols = ["WORKER", "QUEUES", "EXECUTOR", "SLOTS", "IN-FLIGHT", "RUNNING", "UP", "METRICS"]
    print(table(
        wcols,
        [[w.name, ",".join(w.queues), w.executor, w.concurrency, w.in_flight, len(w.running),
          uptime(now - w.started_at), f":{w.metrics_port}" if w.metrics_port else "-"]
         for w in workers],
        right=["SLOTS", "IN-FLIGHT", "RUNNING", "UP"],
    ))
    return 0


# -- purge -------------------------------------------------------------------------------------
async def cmd_purge(app: QTasks, args: argparse.Namespace) -> int:
    broker = await app.broker()
    queues = args.queue or list(app.settings.worker.queues)
    before = {q: await broker.queue_stats(q) for q in queues}
    total = sum(s.pending + s.ack_pending for s in before.values())
    if not args.yes:
        question = (
            f"Delete {total} message(s) from queue(s) {', '.join(queues)} "
            f"in stream {app.settings.nats.stream}?"
        )
        if not sys.stdin.isatty():
            print("qtasks: refusing to purge without --yes (no terminal to confirm on)",
                  file=sys.stderr)
            return 2
        if not confirm(question):
            print("aborted", file=sys.stderr)
            return 1
    purged = {q: await broker.purge(q) for q in queues}
    if args.json:
        print(to_json({"purged": purged}))
    else:
        print(table(["QUEUE", "PURGED"], sorted(purged.items()), right=["PURGED"]))
    return 0


# -- revoke ------------------------------------------------------------------------------------
async def cmd_revoke(app: QTasks, args: argparse.Namespace) -> int:
    out = []
    for task_id in args.task_ids:
        state = await app.AsyncResult(task_id).arevoke(terminate=not args.no_terminate)
        out.append({"task_id": task_id, "state": state.value,
                    "revoked": state is State.REVOKED})
    if args.json:
        print(to_json(out if len(out) > 1 else out[0]))
    else:
        rows = [[o["task_id"], o["state"] if o["revoked"] else f"{o['state']} (already finished)"]
                for o in out]
        print(table(["TASK ID", "STATE"], rows))
    return 0
