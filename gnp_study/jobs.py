"""Submit a study to a Ray cluster as a Ray job, and watch, follow or stop it.

A study submitted here runs on the cluster's head node as the entrypoint
``<python> -m gnp_study run greedy <study file> --output <output> --address auto``; its trials run on the
cluster's workers, and the ``run greedy`` verb builds the report in the study folder when the study ends.
The study folder (``--output``) should be storage every node and you can reach: a shared file system
path or an ``s3://`` / ``gs://`` URI. Without ``--output`` the results stay in the job's working
directory on the head node.

The job carries the project through a Ray runtime environment: its ``working_dir`` holds the content of
the project root (``gnp_study/``, ``search_spaces/``, ...; without ``.git``, ``reports/``, Parquet files,
virtual environments and caches, and without whatever the project's ``.gitignore`` names) plus a copy of
the study file, so the same study runs unchanged whether it lives inside the project or not.

Source: Ray's job submission SDK (``ray.job_submission.JobSubmissionClient``); token authentication of
Ray >= 2.52 (``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN``) is read by that client from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, TextIO

#: Patterns (gitignore syntax, as Ray's ``runtime_env["excludes"]``) left out of the uploaded project.
EXCLUDES = [
    ".git",
    "reports/",
    "*.parquet",
    "venv/",
    ".venv/",
    "env/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    "*.egg-info/",
    "build/",
    "dist/",
]

#: Folder of the uploaded working directory that holds the submitted study file.
STUDY_DIR = "gnp_study_job"

#: Used when neither ``--address`` nor ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS`` is given.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

#: Exit status of the job verbs for a usage or connection error (unreachable address, unknown job).
EXIT_ERROR = 2


class JobError(RuntimeError):
    """A job request failed: cluster unreachable, unknown job id, missing study file. One-line message."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def project_root() -> Path | None:
    """The source tree that holds this package (the folder with ``pyproject.toml``), or None.

    Returns:
        The project root when ``gnp_study`` is imported from a checkout; None when it is imported from
        an installed copy (site-packages), in which case only the package itself is uploaded.
    """
    pkg = Path(__file__).resolve().parent
    root = pkg.parent
    return root if (root / "pyproject.toml").is_file() else None


def _resolve_study(study_path: str | os.PathLike) -> Path:
    p = Path(study_path)
    if p.is_file():
        return p.resolve()
    try:  # a bare name of a shipped search space, as ``run greedy`` accepts it
        from gnp_study.spec import find_study

        return Path(find_study(str(study_path))).resolve()
    except Exception:
        raise JobError(f"study file {str(study_path)!r} not found") from None


@contextmanager
def staged_working_dir(study_path: str | os.PathLike) -> Iterator[tuple[Path, str]]:
    """Build the job's working directory in a temporary folder; removed on exit.

    The folder holds symbolic links to the project root's top-level entries (except those matching
    :data:`EXCLUDES`; Ray follows the links when it zips the folder and still applies the project's
    ``.gitignore``) and a copy of the study file at ``gnp_study_job/<file name>``. Nothing is written
    into the project itself.

    Args:
        study_path: the study YAML file (or the name of a shipped search space).

    Yields:
        ``(folder, study_arg)``: the folder to upload as ``working_dir`` and the study file's path
        relative to it (what the entrypoint passes to ``run greedy``).

    Raises:
        JobError: the study file does not exist.
    """
    study = _resolve_study(study_path)
    root = project_root()
    with tempfile.TemporaryDirectory(prefix="gnp-study-job-") as tmp:
        stage = Path(tmp)
        excluded = {p.rstrip("/") for p in EXCLUDES if "*" not in p}
        if root is not None:
            for entry in sorted(root.iterdir()):
                if entry.name in excluded or entry.name == STUDY_DIR or entry.suffix in (".parquet", ".pyc"):
                    continue
                os.symlink(entry, stage / entry.name)
        else:  # installed package: ship the package alone
            os.symlink(Path(__file__).resolve().parent, stage / "gnp_study")
        (stage / STUDY_DIR).mkdir()
        shutil.copy2(study, stage / STUDY_DIR / study.name)
        yield stage, f"{STUDY_DIR}/{study.name}"


def build_entrypoint(study_arg: str, *, output: str | None = None, python: str | None = None,
                     extra_args: Sequence[str] = ()) -> str:
    """The shell command the job runs on the head node.

    Args:
        study_arg: the study file, relative to the job's working directory.
        output: the study folder (local/shared path or ``s3://`` / ``gs://`` URI); omitted when None.
        python: the interpreter that has the project's dependencies (default ``python`` on the head's
            PATH; a job's entrypoint runs with the head's PATH, not the submitter's).
        extra_args: more arguments for ``run greedy``, appended as given.

    Returns:
        ``<python> -m gnp_study run greedy <study> [--output <output>] --address auto [extra...]``,
        each argument shell-quoted.
    """
    argv = [python or "python", "-m", "gnp_study", "run", "greedy", study_arg]
    if output is not None:
        argv += ["--output", str(output)]
    argv += ["--address", "auto", *map(str, extra_args)]
    return " ".join(shlex.quote(a) for a in argv)


def build_runtime_env(working_dir: str | os.PathLike, *, extra_pip: Sequence[str] | None = None,
                      py_modules: Sequence[str] | None = None) -> dict:
    """The job's Ray runtime environment.

    Args:
        working_dir: local folder Ray zips and uploads (see :func:`staged_working_dir`).
        extra_pip: pip requirement strings installed for the job (e.g. a package the cluster lacks).
        py_modules: folders of the user's packages that the study's import paths name
            (:func:`study_packages`); Ray uploads each and puts it on the path of the job's driver and
            of every worker.

    Returns:
        ``{"working_dir", "excludes", "env_vars"[, "pip"][, "py_modules"]}``; ``env_vars`` carries
        ``PYTHONUNBUFFERED=1`` (logs stream as they are written) and ``RAY_AUTH_MODE`` when it is set here
        (never a token).
    """
    env_vars = {"PYTHONUNBUFFERED": "1"}
    if os.environ.get("RAY_AUTH_MODE"):
        env_vars["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
    runtime_env: dict = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env_vars}
    if extra_pip:
        runtime_env["pip"] = list(extra_pip)
    if py_modules:
        runtime_env["py_modules"] = list(py_modules)
    return runtime_env


def study_packages(study_path: str | os.PathLike) -> list[str]:
    """The folders of the user's packages a study's import paths name (model, data function), to ship.

    Args:
        study_path: the study file (its ``code_dir`` is relative to its folder).
    Returns:
        Absolute package folders (:func:`gnp_study.user_code.ship_dirs`); ``[]`` for a study of the
        registry's models and data.
    Raises:
        JobError: the study is invalid, or its code does not import or is not a package.
    """
    from gnp_study.spec import SpecError, load_spec
    from gnp_study.user_code import UserCodeError, ship_dirs

    try:
        spec = load_spec(_resolve_study(study_path), check_names=False)
        return ship_dirs(spec.import_paths(), "model.name / data.dataset")
    except (SpecError, UserCodeError) as e:
        raise JobError(str(e)) from None


def _client(address: str | None):
    """Connect to a cluster's job server; :class:`JobError` with one line when that fails."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # pragma: no cover - ray[default] is a dependency
        raise JobError(f"Ray's job submission client is missing ({e}); install 'ray[default]'") from None
    if address is None and not (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        address = DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except Exception as e:
        raise JobError(f"cannot reach the Ray job server at {address or os.environ.get('RAY_ADDRESS')}: "
                       f"{_one_line(e)}") from None


def _job_name(study: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", study.stem).strip("-") or "study"
    return f"gnp-study-{stem}-{uuid.uuid4().hex[:8]}"


def submit_study(study_path: str | os.PathLike, address: str | None, *, output: str | None = None,
                 python: str | None = None, extra_pip: Sequence[str] | None = None,
                 entrypoint_extra_args: Sequence[str] = (), agent_wait_s: float = 60.0) -> str:
    """Submit ``study_path`` to the Ray cluster at ``address`` as a job running ``run greedy``.

    Args:
        study_path: the study YAML file (inside or outside the project) or a shipped study name.
        address: the job server, e.g. ``http://HEAD:8265`` (None: ``RAY_API_SERVER_ADDRESS`` or
            ``RAY_ADDRESS``, else ``http://127.0.0.1:8265``).
        output: the study folder the job writes (shared path or cloud URI); None leaves ``run greedy``'s
            default, relative to the job's working directory on the head node.
        python: interpreter for the entrypoint (default ``python`` on the head's PATH).
        extra_pip: pip packages installed into the job's runtime environment.
        entrypoint_extra_args: more arguments for ``run greedy``.
        agent_wait_s: how long to retry while the server answers that no job agent is available yet
            (right after a node has started).

    Returns:
        The job's submission id, ``gnp-study-<study file stem>-<8 hex>``.

    Raises:
        JobError: missing study file, unreachable job server, or the server refused the job.
    """
    packages = study_packages(study_path)
    client = _client(address)
    with staged_working_dir(study_path) as (stage, study_arg):
        entrypoint = build_entrypoint(study_arg, output=output, python=python,
                                      extra_args=entrypoint_extra_args)
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                return client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=_job_name(Path(study_arg)),
                    runtime_env=build_runtime_env(stage, extra_pip=extra_pip, py_modules=packages),
                    metadata={"gnp_study": Path(study_arg).name, "output": str(output or "")},
                )
            except Exception as e:
                # A node that has just joined has no job agent yet; the server says so with a 500.
                if "No available agent" in str(e) and time.monotonic() < deadline:
                    time.sleep(2.0)
                    continue
                raise JobError(f"the job server refused the study: {_one_line(e)}") from None


def _status_value(status) -> str:
    """``JobStatus.RUNNING`` (an enum) or ``"RUNNING"`` -> ``"RUNNING"``."""
    return str(getattr(status, "value", status))


def job_status(job_id: str, address: str | None) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED (Ray's ``JobStatus`` values).

    Raises:
        JobError: unreachable job server or unknown job id.
    """
    client = _client(address)
    try:
        return _status_value(client.get_job_status(job_id))
    except Exception as e:
        raise JobError(f"cannot get the status of job {job_id!r}: {_one_line(e)}") from None


#: Job statuses after which a job's log no longer grows (Ray's ``JobStatus.is_terminal``).
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")

#: Seconds :func:`follow_logs` waits before re-attaching to a log stream that ended while the job runs;
#: doubled after each wait that brought no new text, up to :data:`FOLLOW_MAX_POLL_S`.
FOLLOW_POLL_S = 1.0
FOLLOW_MAX_POLL_S = 30.0


def follow_logs(job_id: str, address: str | None, out: TextIO | None = None, *, client=None) -> str:
    """Copy the job's driver log to ``out`` as it grows, until the job reaches a terminal status.

    Ray's log stream (``JobSubmissionClient.tail_job_logs``) can end, or break, while the job still runs
    (a long job that prints rarely). When it does and the job is not in a terminal status, this catches
    up from the stored log (``get_job_logs``) and re-attaches after a pause (:data:`FOLLOW_POLL_S`,
    doubled while nothing new arrives, at most :data:`FOLLOW_MAX_POLL_S`); there is no deadline. Every
    stream and the stored log start at the log's first character, so the count of characters written
    so far tells which part of a re-attached stream is new: no line is written twice or skipped.

    Args:
        job_id: the submission id :func:`submit_study` returned.
        address: the job server (as in :func:`submit_study`).
        out: where the log text goes (written and flushed chunk by chunk; default ``sys.stdout`` at the
            time of the call).
        client: a ``JobSubmissionClient`` (or an object with its ``get_job_status``, ``get_job_logs``
            and ``tail_job_logs`` methods) to use instead of connecting to ``address``.

    Returns:
        The job's terminal status: SUCCEEDED, FAILED or STOPPED (:data:`TERMINAL_STATUSES`).

    Raises:
        JobError: unreachable job server or unknown job id (also when the server stops answering while
            the job is followed).
    """
    client = _client(address) if client is None else client
    out = sys.stdout if out is None else out

    def status() -> str:
        try:
            return _status_value(client.get_job_status(job_id))
        except Exception as e:
            raise JobError(f"cannot follow job {job_id!r}: {_one_line(e)}") from None

    status()
    written = 0  # characters of the log written to `out` so far

    def emit(text: str, start: int) -> None:
        """Write the part of ``text`` beyond ``written``; ``text`` starts at the log's character ``start``."""
        nonlocal written
        end = start + len(text)
        if end > written:
            out.write(text[max(written - start, 0):])
            out.flush()
            written = end

    async def tail() -> None:
        seen = 0  # each stream starts again at the log's first character
        async for chunk in client.tail_job_logs(job_id):
            if chunk:
                emit(chunk, seen)
                seen += len(chunk)

    delay = FOLLOW_POLL_S
    while True:
        before = written
        try:
            asyncio.run(tail())
        except Exception:  # noqa: BLE001 - a broken stream is re-attached like one that ended
            pass
        final = status()
        try:
            emit(client.get_job_logs(job_id), 0)  # whatever the stream did not deliver
        except Exception as e:
            raise JobError(f"cannot read the logs of job {job_id!r}: {_one_line(e)}") from None
        if final in TERMINAL_STATUSES:
            return final
        delay = FOLLOW_POLL_S if written > before else min(2 * delay, FOLLOW_MAX_POLL_S)
        time.sleep(delay)


def stop_job(job_id: str, address: str | None) -> bool:
    """Ask the cluster to stop the job (its driver and trials).

    Returns:
        True when a stop was requested, False when the job had already ended.

    Raises:
        JobError: unreachable job server or unknown job id.
    """
    client = _client(address)
    try:
        return bool(client.stop_job(job_id))
    except Exception as e:
        raise JobError(f"cannot stop job {job_id!r}: {_one_line(e)}") from None


def wait_for_nodes(address: str, n_nodes: int, timeout_s: float = 300.0, poll_s: float = 2.0) -> int:
    """Wait until the cluster at ``address`` has at least ``n_nodes`` alive nodes.

    A study checks the cluster's GPUs before its first trial, so a script that starts Ray on several
    machines (cluster/slurm/gnp-study.sbatch) waits here until every worker has joined.

    Args:
        address: the cluster's GCS address (``HOST:6379``) or job server URL (``http://HOST:8265``).
        n_nodes: how many alive nodes to wait for (head included).
        timeout_s: give up after this many seconds.
        poll_s: seconds between checks.

    Returns:
        The number of alive nodes seen (>= ``n_nodes``).

    Raises:
        JobError: fewer than ``n_nodes`` alive nodes after ``timeout_s`` (message gives the last count
            and the last error, if any).

    Source: Ray's state API, ``ray.util.state.list_nodes``.
    """
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    alive, last_err = 0, ""
    while True:
        try:
            alive = len(list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=30))
            last_err = ""
        except Exception as e:  # head not up yet
            last_err = _one_line(e)
        if alive >= n_nodes:
            return alive
        if time.monotonic() >= deadline:
            raise JobError(f"only {alive} of {n_nodes} Ray nodes alive at {address} after {timeout_s:g} s"
                           + (f" ({last_err})" if last_err else ""))
        time.sleep(poll_s)


# ----------------------------------------------------------------------------------------------------------
# argparse glue: gnp-study submit | status | logs | stop
# ----------------------------------------------------------------------------------------------------------

_ADDRESS_HELP = ("Ray job server, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS, "
                 f"else {DEFAULT_ADDRESS}). With RAY_AUTH_MODE=token the token comes from $RAY_AUTH_TOKEN, "
                 "$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.")


def _fail(verb: str, err: BaseException) -> int:
    print(f"gnp-study {verb}: error: {_one_line(err)}", file=sys.stderr)
    return EXIT_ERROR


def _exit_for(status: str) -> int:
    return 0 if status == "SUCCEEDED" else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    try:
        if args.output is None:
            print("gnp-study submit: warning: no --output; the study folder stays in the job's working "
                  "directory on the head node (give a shared path or s3:// / gs:// URI)", file=sys.stderr)
        job_id = submit_study(args.study, args.address, output=args.output, python=args.python,
                              extra_pip=args.pip, entrypoint_extra_args=shlex.split(args.run_args))
        print(job_id, flush=True)
        if args.follow:
            return _exit_for(follow_logs(job_id, args.address))
        return 0
    except (JobError, OSError) as e:
        return _fail("submit", e)
    except KeyboardInterrupt:
        print("gnp-study submit: stopped following; the job keeps running", file=sys.stderr)
        return 130


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        print(job_status(args.job_id, args.address))
        return 0
    except JobError as e:
        return _fail("status", e)


def _cmd_logs(args: argparse.Namespace) -> int:
    try:
        if not args.follow:
            client = _client(args.address)
            try:
                sys.stdout.write(client.get_job_logs(args.job_id))
            except Exception as e:
                raise JobError(f"cannot read the logs of job {args.job_id!r}: {_one_line(e)}") from None
            return 0
        return _exit_for(follow_logs(args.job_id, args.address))
    except JobError as e:
        return _fail("logs", e)
    except KeyboardInterrupt:
        print("gnp-study logs: stopped following; the job keeps running", file=sys.stderr)
        return 130


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        requested = stop_job(args.job_id, args.address)
        print(f"stop requested for {args.job_id}" if requested else f"{args.job_id} had already ended")
        return 0
    except JobError as e:
        return _fail("stop", e)


def add_job_commands(subparsers) -> None:
    """Register the verbs ``submit``, ``status``, ``logs`` and ``stop`` on an argparse subparsers object.

    Each verb sets ``func`` to a function taking the parsed ``argparse.Namespace`` and returning the exit
    status: 0 success, 1 the followed job did not succeed, 2 error (unreachable server, unknown job,
    missing study file; one line on stderr), 130 interrupted while following.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers()`` returned.
    """
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "submit", formatter_class=fmt,
        help="submit a study to a Ray cluster as a job; prints the job id",
        description="Submit STUDY as a Ray job that runs `gnp-study run greedy` on the cluster.\n"
                    "Uploads the project (without .git, reports/, *.parquet, venvs) and the study file.\n"
                    "Prints the job id on stdout. The job writes the study folder at --output (trials.parquet,\n"
                    "epochs.parquet, decisions.json, results.md, figures, report.html), built when the study ends.")
    p.add_argument("study", help="study YAML file (inside or outside the project) or a shipped study name")
    p.add_argument("--address", default=None, help=_ADDRESS_HELP)
    p.add_argument("--output", default=None,
                   help="study folder as the cluster sees it: a shared path or s3:// / gs:// URI")
    p.add_argument("--python", default=None,
                   help="Python on the head node that has the dependencies (default: `python` on its PATH)")
    p.add_argument("--pip", action="append", default=None, metavar="REQ",
                   help="extra pip requirement installed in the job's runtime environment (repeatable)")
    p.add_argument("--follow", action="store_true",
                   help="after submitting, print the job's log until it ends; exit 0 only if it succeeded")
    p.add_argument("--run-args", default="", metavar="'ARGS'",
                   help="more arguments for `run greedy` on the cluster, one quoted string: --run-args='--new'")
    p.set_defaults(func=_cmd_submit)

    p = subparsers.add_parser(
        "status", help="print a job's status (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED)",
        description="Print the status of JOB_ID on stdout; writes nothing else.")
    p.add_argument("job_id")
    p.add_argument("--address", default=None, help=_ADDRESS_HELP)
    p.set_defaults(func=_cmd_status)

    p = subparsers.add_parser(
        "logs", help="print a job's log, following it until the job ends",
        description="Print the driver log of JOB_ID on stdout, following it until the job ends;\n"
                    "exit 0 if the job succeeded, 1 if it failed or was stopped. Writes nothing.",
        formatter_class=fmt)
    p.add_argument("job_id")
    p.add_argument("--address", default=None, help=_ADDRESS_HELP)
    p.add_argument("--no-follow", dest="follow", action="store_false",
                   help="print the log so far and return at once")
    p.set_defaults(func=_cmd_logs)

    p = subparsers.add_parser(
        "stop", help="stop a running job and its trials",
        description="Ask the cluster to stop JOB_ID; prints whether a stop was requested. The study folder\n"
                    "keeps what was written; re-running the study on it resumes.",
        formatter_class=fmt)
    p.add_argument("job_id")
    p.add_argument("--address", default=None, help=_ADDRESS_HELP)
    p.set_defaults(func=_cmd_stop)
