"""Crash-safe checkpoints that are verified on load and never execute code.

A checkpoint at step N is a pair of files in `RUN/checkpoints/`:
- `step-N.safetensors`: the weights (`model/<name>`) and every tensor of the trainer state
  (`state/<i>`: optimiser moments, the torch RNG state, numpy's Mersenne Twister key);
- `step-N.json`: the rest of the trainer state as JSON (python's RNG state is a tuple of ints,
  the scheduler, history, best score, logging window), the SHA-256 of the safetensors file, the
  settings fingerprint, and a checksum of the JSON itself.
Each file is written atomically, the JSON second (it commits the pair); `latest.json`, written
last, names the newest step. A kill at any instant leaves the previous complete checkpoint.

Loading unpickles nothing: safetensors and JSON only. Pickled `.pt` checkpoints of older
versions are refused unread. Every file is verified (checksums, settings fingerprint, shapes)
before anything is used; the two newest checkpoints are kept, so a newest one that fails
(flipped bytes, truncated or missing half, copied in from another run) is skipped with a
warning in favour of the previous one. Weights files (`best.safetensors` too) carry their own
checksum and fingerprint in the safetensors metadata, so each can be verified alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .errors import FastAdaptError
from .runlock import require_rank_0
from .utils import NO_SPACE, WriteError, atomic_write, atomic_write_text

FORMAT = 2  # 1: weights + pickled .pt state (refused), 2: this layout
KEEP = 2  # checkpoints kept, so that a resume can fall back to the previous good one
_STEP = re.compile(r"^step-(\d+)\.(safetensors|json)$")

#: Settings that do not change what training computes, left out of the fingerprint: labels
#: (`name`, `description`), the paper's numbers (`reference`), and `overrides`, which only
#: records how the (fingerprinted) resolved values were reached.
UNFINGERPRINTED = ("name", "description", "reference", "overrides")


class CheckpointError(FastAdaptError):
    """A file that failed verification; the message names it and says what is wrong."""


class CheckpointWarning(UserWarning):
    """A bad checkpoint was skipped in favour of an older, good one."""


#: Settings added after runs were recorded, with the default that keeps the earlier behaviour: at
#: that default they are left out, so a run folder written before they existed keeps its
#: fingerprint and still loads (its config.yaml reads back with the default filled in).
LATER_SETTINGS = {("train", "select_metric"): None}


def settings_fingerprint(config) -> str:
    """A hash of the resolved settings that determine a run's results (see UNFINGERPRINTED and
    LATER_SETTINGS)."""
    values = {k: v for k, v in config.to_dict().items() if k not in UNFINGERPRINTED}
    for (section, key), default in LATER_SETTINGS.items():
        block = values.get(section)
        if isinstance(block, dict) and block.get(key, default) == default:
            values[section] = {k: v for k, v in block.items() if k != key}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- self-verifying safetensors -------------------------------------------------------------
def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes of the tensors and of the other metadata:
    independent of the file layout, so it can be stored inside the file it checks."""
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _tensor_file(tensors: dict[str, torch.Tensor], metadata: dict) -> bytes:
    meta = {k: str(v) for k, v in metadata.items()}
    meta["sha256"] = _digest(tensors, meta)
    # One metadata entry: safetensors writes several in a random order, and the bytes of a
    # file must not vary between identical runs.
    return save_safetensors(tensors, metadata={"fastadapt": json.dumps(meta, sort_keys=True)})


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror})") from None
    if not data:
        raise CheckpointError(f"{path} is empty")
    return data


def _parse_tensor_file(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, after checking its embedded checksum."""
    try:
        tensors = load_safetensors(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except Exception:  # noqa: BLE001 - untrusted bytes: any parse failure means a bad file
        raise CheckpointError(f"{path} is not a valid safetensors file (truncated or overwritten)") from None
    try:
        metadata = json.loads(header["fastadapt"])
        stored = metadata.pop("sha256")
    except (KeyError, TypeError, ValueError, AttributeError):
        stored = None
    if stored is None:
        raise CheckpointError(f"{path} has no checksum (written by an older fastadapt)")
    if stored != _digest(tensors, metadata):
        raise CheckpointError(f"{path} is corrupt (its contents do not match their checksum)")
    return tensors, metadata


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict after checking names and shapes, so a mismatch never half-loads."""
    expected = module.state_dict()
    for name in sorted(set(expected) | set(tensors)):
        if name not in tensors or name not in expected or tensors[name].shape != expected[name].shape:
            raise CheckpointError(f"{path} holds the weights of another model (at {name!r})")
    module.load_state_dict(tensors)


def save_weights(path: Path, module: torch.nn.Module, metadata: dict | None = None) -> None:
    """Weights as safetensors, with a checksum (and whatever `metadata` says, e.g. the step and
    the settings fingerprint) in the file's metadata."""
    blob = _tensor_file(tensors_of(module), metadata or {})
    atomic_write(path, lambda f: f.write(blob))


def load_weights(path: Path, module: torch.nn.Module, fingerprint: str | None = None) -> None:
    """Verify `path` (checksum; with `fingerprint`, that the run's settings wrote it), then load
    it into `module`. A bad file is a one-line FastAdaptError naming it."""
    path = Path(path)
    try:
        tensors, metadata = _parse_tensor_file(path, _read_bytes(path))
        if fingerprint is not None and metadata.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"{path} was written by a run with other settings (fingerprint "
                f"{metadata.get('fingerprint')}, this run's is {fingerprint})"
            )
        _load_into(module, tensors, path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; restore it from a backup or train the run again") from None


# -- trainer state <-> JSON + tensors --------------------------------------------------------
def _encode(obj, tensors: dict[str, torch.Tensor]):
    """JSON for `obj`, with its tensors and arrays moved into `tensors` (as `state/<i>`)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        key = f"state/{sum(k.startswith('state/') for k in tensors)}"
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        # numpy: raw bytes (safetensors has no uint32) plus dtype and shape
        tensors[key] = torch.from_numpy(np.frombuffer(np.ascontiguousarray(obj).tobytes(), dtype=np.uint8).copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj, tensors: dict[str, torch.Tensor], path: Path):
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if not isinstance(obj, dict):
        return obj
    try:
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            dtype = np.dtype(obj["dtype"])
            if dtype.kind not in "biuf":
                raise ValueError(dtype)
            raw = tensors[obj["__ndarray__"]].numpy().tobytes()
            return np.frombuffer(raw, dtype=dtype).reshape(obj["shape"]).copy()
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors, path) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in obj["__items__"]}
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} describes trainer state it does not hold") from None
    return {k: _decode(v, tensors, path) for k, v in obj.items()}


def _sealed(record: dict) -> str:
    """JSON text of `record` with a checksum of its canonical form."""
    body = json.dumps(record, sort_keys=True)
    return json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), **record})


def _unseal(path: Path, data: bytes) -> dict:
    try:
        record = json.loads(data)
        stored = record.pop("sha256")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointError(f"{path} is not a checkpoint record (truncated or overwritten)") from None
    if stored != hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest():
        raise CheckpointError(f"{path} is corrupt (its contents do not match their checksum)")
    return record


# -- checkpoints -----------------------------------------------------------------------------
def _steps_on_disk(folder: Path) -> dict[int, set[str]]:
    """step -> the kinds of its files present ("safetensors", "json")."""
    steps: dict[int, set[str]] = {}
    for path in folder.glob("step-*"):
        match = _STEP.match(path.name)
        if match:
            steps.setdefault(int(match[1]), set()).add(match[2])
    return steps


def _stem(step: int) -> str:
    return f"step-{step:08d}"


def latest_step(run_dir: Path) -> int | None:
    """The step `latest.json` names, or None when it is missing or unreadable (never raises)."""
    try:
        step = json.loads((Path(run_dir) / "checkpoints" / "latest.json").read_bytes())["step"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def refuse_pickles(run_dir: Path) -> None:
    """Old pickled checkpoints can run arbitrary code when loaded: refuse the folder, unread."""
    run_dir = Path(run_dir)
    for path in sorted(run_dir.glob("*.pt")) + sorted((run_dir / "checkpoints").glob("*.pt")):
        raise FastAdaptError(
            f"{path} was written by an older fastadapt and may execute code on load, so it "
            f"is not loaded; delete {run_dir / 'checkpoints'} to restart the run from "
            f"step 0, or finish it with the fastadapt version that wrote it"
        )


def save_checkpoint(run_dir: Path, step: int, module: torch.nn.Module, state: dict, fingerprint: str) -> None:
    """Write the checkpoint pair of `step`, commit it in latest.json, keep the KEEP newest.
    A full disk raises a one-line WriteError naming the step a re-run resumes from. Under
    torch.distributed, rank 0 alone writes (every rank reads the files to resume)."""
    require_rank_0("write a checkpoint")
    folder = Path(run_dir) / "checkpoints"
    stem = _stem(step)
    tensors = {f"model/{k}": v for k, v in tensors_of(module).items()}
    encoded = _encode(state, tensors)
    blob = _tensor_file(tensors, {"format": FORMAT, "step": step, "fingerprint": fingerprint})
    record = {
        "format": FORMAT,
        "step": step,
        "fingerprint": fingerprint,
        "files": {f"{stem}.safetensors": hashlib.sha256(blob).hexdigest()},
        "state": encoded,
    }
    before = sorted(s for s, kinds in _steps_on_disk(folder).items() if "json" in kinds and s != step)
    committed = False
    try:
        atomic_write(folder / f"{stem}.safetensors", lambda f: f.write(blob))
        atomic_write_text(folder / f"{stem}.json", _sealed(record))
        committed = True
        atomic_write_text(folder / "latest.json", json.dumps({"step": step, "stem": stem}))
    except WriteError as exc:
        if not committed:  # a weights file without its record is no checkpoint: leave no half pair
            (folder / f"{stem}.safetensors").unlink(missing_ok=True)
        resume = step if committed else (before[-1] if before else 0)
        if exc.reason == NO_SPACE:
            raise WriteError(exc.path, exc.reason, f"free space and re-run to resume from step {resume}") from None
        raise
    keep = {step, *[s for s in before if s < step][-(KEEP - 1) :]}
    for path in folder.glob("step-*"):
        match = _STEP.match(path.name)
        if match and int(match[1]) not in keep:
            path.unlink(missing_ok=True)


def read_checkpoint(folder: Path, step: int, fingerprint: str | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Verify the pair of `step` and return (trainer state, model tensors); CheckpointError if
    any file is missing, damaged, or written by a run with other settings."""
    stem = _stem(step)
    record_path, weights_path = folder / f"{stem}.json", folder / f"{stem}.safetensors"
    record = _unseal(record_path, _read_bytes(record_path))
    data = _read_bytes(weights_path)
    if record.get("format") != FORMAT or record.get("step") != step:
        raise CheckpointError(f"{record_path} does not describe checkpoint {stem}")
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{record_path} was written by a run with other settings (fingerprint "
            f"{record.get('fingerprint')}, this run's is {fingerprint})"
        )
    if (record.get("files") or {}).get(weights_path.name) != hashlib.sha256(data).hexdigest():
        raise CheckpointError(
            f"{weights_path} is corrupt or from another checkpoint (its SHA-256 is not "
            f"the one {record_path.name} records)"
        )
    tensors, _ = _parse_tensor_file(weights_path, data)
    state = _decode(record.get("state"), tensors, record_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{record_path} holds no trainer state")
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    return state, model


def load_checkpoint(run_dir: Path, module: torch.nn.Module, fingerprint: str | None = None) -> dict | None:
    """Load the newest good checkpoint's weights into `module` and return its trainer state;
    None when the run has none. Bad checkpoints are skipped with a CheckpointWarning; when no
    good one is left, a one-line FastAdaptError names the problem and the fix."""
    run_dir = Path(run_dir)
    folder = run_dir / "checkpoints"
    refuse_pickles(run_dir)
    if not folder.is_dir():
        return None
    pointer = folder / "latest.json"
    named = latest_step(run_dir)
    steps = _steps_on_disk(folder)
    problems = []
    if pointer.exists() and named is None:
        problems.append(f"{pointer} is unreadable")
    elif named is not None and named not in steps:
        problems.append(f"{pointer} names step {named}, whose files are missing")
    if not steps:
        if problems:
            raise FastAdaptError(
                f"{problems[0]} and {folder} holds no checkpoint; delete {folder} to restart the run from step 0"
            )
        return None
    for step in sorted(steps, reverse=True):
        if "json" not in steps[step] and named is not None and step > named:
            continue  # the weights of a checkpoint whose write was cut short: never committed
        try:
            state, model = read_checkpoint(folder, step, fingerprint)
            _load_into(module, model, folder / f"{_stem(step)}.safetensors")
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems:
            warnings.warn(
                f"{'; '.join(problems)}: resuming from step {step}, the newest good checkpoint",
                CheckpointWarning,
                stacklevel=2,
            )
        return state
    # Name the newest checkpoint's problem rather than latest.json's, when there is one.
    worst = problems[1] if len(problems) > 1 and problems[0].startswith(str(pointer)) else problems[0]
    raise FastAdaptError(f"no usable checkpoint in {folder}: {worst}; delete {folder} to restart the run from step 0")
