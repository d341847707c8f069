"""Where `fastadapt tune` keeps its studies: Optuna's RDB storage (SQLite by default, PostgreSQL
through psycopg 3 for many workers) with a heartbeat and retries of trials whose worker died, and
the study folder's `study.json` that `fastadapt train --from-study` reads."""

from __future__ import annotations

import json
import random
import time
import warnings
from pathlib import Path

from .errors import FastAdaptError

STUDY_FILE = "study.json"
MAX_RETRY = 2  # retries of a trial whose worker died, before it stays failed


def storage_url(storage: str | None, study_dir: Path) -> str:
    """The SQLAlchemy URL of `--storage`: None is `STUDY/study.db` (SQLite); a path without a
    scheme is a SQLite file; `postgresql://` is served by psycopg 3 (`postgresql+psycopg://`)."""
    if storage is None:
        return f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).resolve()}"
    scheme, rest = storage.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return storage


def shown_url(url: str) -> str:
    """The URL without its password (recorded in study.json, printed): libpq reads it from
    PGPASSWORD or ~/.pgpass when the study is opened again."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(password=None).render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported when it is opened
        return url


def open_storage(url: str, heartbeat: int):
    """Optuna's RDB storage with a heartbeat and retries of trials whose worker died; connection
    and driver errors are one line naming the storage."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):  # workers starting together may race to create the tables
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY, inherit_intermediate_values=True
                ),
            )
        except ModuleNotFoundError as exc:
            raise FastAdaptError(
                f"--storage {shown_url(url)} needs the Python package {exc.name!r}; "
                f"install fastadapt[tune] (psycopg for PostgreSQL)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's many connection errors
            if attempt == 2:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise FastAdaptError(
                    f"cannot open the study storage {shown_url(url)}: {first}; check the URL, "
                    f"that the server runs and accepts this user"
                ) from None
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def load_study_record(study_dir: str | Path) -> dict:
    """`STUDY/study.json` (written by `fastadapt tune`), checked."""
    path = Path(study_dir) / STUDY_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FastAdaptError(
            f"{study_dir} is not a study folder (no {STUDY_FILE}); give the folder of `fastadapt tune`"
        ) from None
    except (OSError, ValueError) as exc:
        raise FastAdaptError(
            f"{path} is unreadable ({exc}); re-create it by running the same `fastadapt tune`"
        ) from None
    if not isinstance(record, dict) or not {"study", "config", "overrides", "space"} <= set(record):
        raise FastAdaptError(f"{path} lacks study, config, overrides or space; re-run the same `fastadapt tune`")
    return record


def best_trial_settings(study_dir: str | Path, storage: str | None = None) -> tuple[dict, list[str], dict]:
    """For `fastadapt train --from-study`: (the preset's settings, the overrides that make the
    full run: the study's --set items then the best trial's values, without the trial-only
    settings, and a summary of the best trial)."""
    import optuna

    from .tune_space import override

    study_dir = Path(study_dir)
    record = load_study_record(study_dir)
    url = storage_url(storage if storage is not None else record.get("storage"), study_dir)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        # SQLite would create an empty file there and then find no study in it
        raise FastAdaptError(
            f"the study storage {url.removeprefix('sqlite:///')} does not exist; give the study's "
            "database with --study-storage (a SQLite file or a postgresql:// URL)"
        )
    try:
        study = optuna.load_study(study_name=record["study"], storage=open_storage(url, 10))
    except KeyError:  # optuna: 'Record does not exist.'
        raise FastAdaptError(
            f"study {record['study']!r} is not in {shown_url(url)}; give the storage it was created in "
            "with --study-storage"
        ) from None
    try:
        best = study.best_trial
    except ValueError:
        raise FastAdaptError(
            f"study {record['study']!r} has no completed trial yet; run `fastadapt tune` on it first"
        ) from None
    order = list(record["space"].get("params") or {})
    keys = sorted(best.params, key=lambda k: order.index(k) if k in order else len(order))
    items = [*record["overrides"], *(override(k, best.params[k]) for k in keys)]
    summary = {"study": record["study"], "trial": best.number, "value": best.value, "params": best.params}
    return record["config"], items, summary
