"""Checkpoints of the :class:`~conformood.train.Trainer`: safetensors + JSON, written atomically by rank 0.

A checkpoint holds the model, every optimiser's state, the schedules, the random generators (the shuffling one
and each process's augmentation stream), the objective's and the callbacks' state and the history, so that a
resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import distributed as dist_utils
from ..io import check_state_dict, load_state, save_state

if TYPE_CHECKING:
    from .trainer import Trainer

CHECKPOINT_KIND = "checkpoint"


def augmentation_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s augmentation stream."""
    return int(np.random.SeedSequence([seed, rank, 1]).generate_state(1)[0])


#: settings that may change between a run and its resumption (where it runs, not what it computes)
RESUMABLE_CHANGES = frozenset({"device", "distributed"})


def check_same_run(meta: dict, train_config: dict, recipe: dict | None, path: str | os.PathLike) -> None:
    """Refuse to resume a checkpoint written by a different run: a clear error listing every field whose value
    differs between the checkpoint's training config and recipe and this run's."""
    diffs = []
    for part, now, saved in (("", train_config, meta.get("train_config")), ("recipe.", recipe, meta.get("recipe"))):
        if now is None or saved is None:
            continue
        now, saved = json.loads(json.dumps(now, default=str)), json.loads(json.dumps(saved, default=str))
        for key in sorted(set(now) | set(saved)):
            if key not in RESUMABLE_CHANGES and now.get(key) != saved.get(key):
                diffs.append(f"{part}{key}: {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now")
    if diffs:
        raise ValueError(f"{path} was written by a different run; resume it with its own settings or start a new "
                         f"run in another folder. Differing: {'; '.join(diffs)}")


def _all_aug_states(trainer: Trainer) -> list[torch.Tensor]:
    state = trainer.aug_generator.get_state()
    if trainer.world_size == 1:
        return [state]
    gathered = dist_utils.gather_no_grad(state[None].to(trainer.collective_device()))
    return [s.cpu() for s in gathered]


def save_checkpoint(trainer: Trainer, path: str | os.PathLike) -> None:
    """Atomically save model, optimisers, schedules, generators, objective and callback state and the
    history (safetensors + JSON); rank 0 writes."""
    aug_states = _all_aug_states(trainer)  # a collective: every process takes part
    if trainer.rank == 0:
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        scalars: list[dict] = []
        groups: list[list] = []
        for i, opt in enumerate(trainer.optimizers):
            opt_state = opt.state_dict()
            prefix = "optim." if i == 0 else f"optim{i}."
            plain: dict[str, dict[str, Any]] = {}
            for pid, state in opt_state["state"].items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"{prefix}{pid}.{key}"] = value
                    else:
                        plain.setdefault(str(pid), {})[key] = value
            scalars.append(plain)
            groups.append(opt_state["param_groups"])
        if hasattr(trainer.objective, "state_dict"):
            for k, v in trainer.objective.state_dict().items():
                tensors[f"objective.{k}"] = v
        callback_meta = []
        for i, callback in enumerate(trainer.callbacks):
            state = callback.state_dict() if hasattr(callback, "state_dict") else {}
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"callback.{i}.{k}"] = v
            callback_meta.append({k: v for k, v in state.items() if not isinstance(v, torch.Tensor)})
        tensors["generator"] = trainer.generator.get_state()
        for r, s in enumerate(aug_states):
            tensors[f"aug_generator.{r}"] = s
        config = {
            "epoch": trainer.epoch,
            "world_size": trainer.world_size,
            "train_config": asdict(trainer.config),
            "recipe": trainer.recipe,
            "param_groups": groups[0],
            "optimizers": groups,
            "optimizer_scalars": scalars,
            "schedules": [_plain(s.state_dict()) for s in trainer.schedules or ()],
            "callbacks": callback_meta,
            "history": asdict(trainer.history),
        }
        save_state(path, tensors, config, kind=CHECKPOINT_KIND)
    if trainer.world_size > 1:
        import torch.distributed as dist

        dist.barrier()

def load_checkpoint(trainer: Trainer, path: str | os.PathLike) -> None:
    """Restore what :func:`save_checkpoint` wrote into ``trainer``; the model's architecture must match."""
    tensors, meta = load_state(path, kind=CHECKPOINT_KIND)
    check_same_run(meta, asdict(trainer.config), trainer.recipe, path)
    check_checkpoint_fields(meta, trainer, path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict(trainer.model.state_dict(), model_state, f"{path} (model)")
    trainer.model.load_state_dict(model_state)
    groups = meta["optimizers"]
    scalars = meta.get("optimizer_scalars", [{} for _ in groups])
    for i, opt in enumerate(trainer.optimizers):
        prefix = "optim." if i == 0 else f"optim{i}."
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, name = key[len(prefix):].split(".", 1)
                state.setdefault(int(pid), {})[name] = value
        for pid, values in scalars[i].items():
            state.setdefault(int(pid), {}).update(values)
        opt.load_state_dict({"state": state, "param_groups": groups[i]})
    trainer.epoch = int(meta["epoch"])
    if "schedules" in meta:
        for schedule, saved in zip(trainer.schedules or (), meta["schedules"]):
            schedule.load_state_dict(saved)
    elif trainer.schedules is not None:  # a checkpoint of version 1: its closed-form schedule is recomputed
        for schedule, opt in zip(trainer.schedules, trainer.optimizers):
            schedule.last_epoch = trainer.epoch * (trainer._schedule_steps // trainer.config.epochs)
            for group, lr in zip(opt.param_groups, schedule.get_lr()):
                group["lr"] = lr
    objective_state = {k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")}
    if hasattr(trainer.objective, "load_state_dict"):
        trainer.objective.load_state_dict(objective_state)
    for i, callback in enumerate(trainer.callbacks):
        if hasattr(callback, "load_state_dict"):
            saved = dict(meta.get("callbacks", [{}] * len(trainer.callbacks))[i])
            prefix = f"callback.{i}."
            saved.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            callback.load_state_dict(saved)
    trainer.generator.set_state(tensors["generator"])
    aug_key = f"aug_generator.{trainer.rank}"
    if meta.get("world_size", 1) == trainer.world_size and aug_key in tensors:
        trainer.aug_generator.set_state(tensors[aug_key])
    else:  # resumed on another number of processes: fresh, still seeded, augmentation streams
        trainer.aug_generator.manual_seed(augmentation_seed(trainer.config.seed * 1_000 + trainer.epoch, trainer.rank))
    trainer.history = type(trainer.history)(**meta["history"])


def check_checkpoint_fields(meta: dict, trainer: Trainer, path: str | os.PathLike) -> None:
    """Validate a checkpoint's stored fields against this run before anything is restored: the epoch lies in
    0..epochs, the optimisers' settings have this run's keys with finite numbers of the same kinds, and the
    history holds one finite entry per finished epoch."""
    epoch, epochs = meta.get("epoch"), trainer.config.epochs
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise ValueError(f"{path}: epoch must be an integer in 0..{epochs}, got {epoch!r}")
    world = meta.get("world_size", 1)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"{path}: world_size must be an integer >= 1, got {world!r}")
    groups = meta.get("optimizers")
    if not isinstance(groups, list) or len(groups) != len(trainer.optimizers):
        raise ValueError(f"{path} holds {len(groups) if isinstance(groups, list) else 'no'} optimiser setting(s), "
                         f"this run has {len(trainer.optimizers)}")
    for i, (stored, opt) in enumerate(zip(groups, trainer.optimizers)):
        if not isinstance(stored, list) or len(stored) != len(opt.param_groups):
            raise ValueError(f"{path}: optimiser {i} must hold {len(opt.param_groups)} parameter group(s)")
        for g, (saved, current) in enumerate(zip(stored, opt.param_groups)):
            if not isinstance(saved, dict):
                raise ValueError(f"{path}: optimiser {i} group {g} must be an object")
            for key, now in current.items():
                if key == "params":
                    continue
                if key not in saved or not _same_kind(saved[key], now):
                    raise ValueError(f"{path}: optimiser {i} group {g} field {key!r} must be like {now!r}, got "
                                     f"{saved.get(key, '(missing)')!r}")
    history = meta.get("history")
    if not isinstance(history, dict) or set(history) != {"loss", "lr", "metrics"}:
        raise ValueError(f"{path}: the history must hold loss, lr and metrics")
    for key in ("loss", "lr"):
        values = history[key]
        if not isinstance(values, list) or not all(_same_kind(v, 0.0) for v in values):
            raise ValueError(f"{path}: history {key!r} must be a list of finite numbers")
    if not isinstance(history["metrics"], list) or not all(isinstance(m, dict) for m in history["metrics"]):
        raise ValueError(f"{path}: history 'metrics' must be a list of objects")


def _same_kind(value: Any, like: Any) -> bool:
    """True when ``value`` (from JSON) is the same kind of value as ``like``: bool, finite number, string, None
    or a list / tuple of such."""
    if isinstance(like, bool) or like is None or isinstance(like, str):
        return type(value) is type(like)
    if isinstance(like, (int, float)):
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(like, (list, tuple)):
        return isinstance(value, list) and len(value) == len(like) and all(map(_same_kind, value, like))
    if isinstance(like, torch.Tensor):
        return _same_kind(value, like.item()) if like.numel() == 1 else True
    return True


def _plain(state: dict) -> dict:
    """A schedule's state with only JSON values (the schedules keep no callables)."""
    return {k: v for k, v in state.items() if isinstance(v, (int, float, bool, str, list, type(None)))}
