"""APTPolicy: backbone -> layer-wise gated fusion -> action expert, with DDIM or flow denoising.

    images (B,C,3,S,S) ─┐
                        ├─> Backbone ──> taps f_1..f_K (B,N,D), lang_mask, valid
    instruction ids ────┘                    │ (computed ONCE per chunk; K/V cached per layer)
                                             v
    history, state ──> expert tokens ──> [layer 1] <─gate g_1─ f_{tap(1)}   stage 2: tap(l) = l
    noisy actions a_t ─┘                 [layer 2] <─gate g_2─ f_{tap(2)}   stage 1: tap(i) = 2i+1,
    time t ──> adaRMSNorm everywhere        ...                             language keys masked
                                         [layer L] ──> head ──> eps (DDIM) | velocity (flow)

Variants (cfg.variant): apt (stage 1 / 2), single_stage (stage-2 model trained from scratch),
knowledge_insulation (backbone features detached: no expert gradient reaches the backbone),
token_insertion (language tokens enter the expert's sequence; gated fusion carries vision only).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import build_backbone
from .config import PolicyConfig
from .expert import ActionExpert
from .lora import LoRALinear, inject_lora
from .objectives import build_objective
from .pointer import GoalPointer
from .text import ByteTokenizer


class APTPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg, ByteTokenizer.vocab_size)
        K = self.backbone.num_taps
        # stage 2: one expert layer per tap; stage 1: half of them, fed by the odd taps (-> 2i+1)
        self.layer_taps = list(range(K)) if cfg.stage == 2 else [2 * i + 1 for i in range(K // 2)]
        self.expert = ActionExpert(cfg, self.backbone.feature_dim, len(self.layer_taps))
        self.objective = build_objective(cfg.objective)
        if cfg.goal_dim:
            # auxiliary grounding head on the expert's state token (apt_core.data.goals); it is a
            # training signal only: sampling never runs it
            W = cfg.expert.width
            self.goal_head = nn.Sequential(
                nn.LayerNorm(W), nn.Linear(W, W), nn.GELU(), nn.Linear(W, cfg.goal_dim)
            )
        if cfg.goal_pointer:  # the goal input's source when sampling (model/pointer.py)
            names = cfg.goal_pointer_state
            self.pointer_state = (
                [cfg.joint_names.index(n) for n in names] if names else list(range(cfg.state_dim))
            )
            self.goal_pointer = GoalPointer(
                self.backbone.feature_dim,
                len(self.pointer_state),
                list(range(1, K, 2)),
                cfg.goal_dim,
                coords=len(cfg.camera_names) if cfg.goal_pointer_coords else 0,
                pixels=(
                    (len(cfg.camera_names), tuple(self.backbone.map_channels))
                    if cfg.goal_pointer_pixels
                    else None
                ),
            )
        if cfg.backbone_mode == "lora":
            inject_lora(
                self.backbone,
                self.backbone.lora_targets,
                cfg.backbone.lora_rank,
                cfg.backbone.lora_alpha,
                scope=self.backbone.lora_scope,
            )
        apply_backbone_mode(self)

    # ---- encoding (once per chunk) -------------------------------------------------------------
    def encode_backbone(self, batch: dict[str, torch.Tensor]) -> dict[str, object]:
        """Backbone forward only: its tapped features, language and valid masks, and the state.
        What the goal pointer reads; `encode` adds what the action expert needs."""
        for key in ("images", "lang_ids", "lang_mask", "state"):
            if key not in batch:
                raise KeyError(f"processed batch is missing {key!r} (build it with Processor.process_batch)")
        bb_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.backbone.parameters())
        insulate = self.cfg.variant == "knowledge_insulation"
        with torch.set_grad_enabled(bb_grad):
            out = self.backbone(batch["images"], batch["lang_ids"], batch["lang_mask"], insulate=insulate)
        return {
            "features": out.features,
            "lang": out.lang_mask,
            "valid": out.valid_mask,
            "state": batch["state"],
            "points": out.points,
            "maps": out.maps,
            "images": batch["images"] if self.cfg.goal_pointer_pixels else None,
        }

    def encode(self, batch: dict[str, torch.Tensor]) -> dict[str, object]:
        """Backbone forward + per-layer context keys/values + expert prefix tokens and masks."""
        enc = self.encode_backbone(batch)
        features, lang, valid = enc["features"], enc["lang"], enc["valid"]  # lang, valid: (B, N)
        see_lang = self.cfg.language_visible and self.cfg.variant != "token_insertion"
        # stage 1 (and token insertion) hide every language key from the gated fusion
        ctx_allowed = (valid if see_lang else valid & ~lang)[:, None, None, :]  # (B, 1, 1, N)
        ctx = [
            layer.context(features[tap])
            for layer, tap in zip(self.expert.layers, self.layer_taps, strict=True)
        ]
        lang_tokens = None
        if self.cfg.variant == "token_insertion":
            sel = lang[0]
            if not bool((lang == sel).all()):
                raise ValueError(
                    "token insertion needs language tokens at the same positions in every sample"
                )
            top = features[-1][:, sel]  # (B, L, D)
            lang_tokens = (self.expert.lang_in(self.expert.lang_norm(top)), valid[:, sel])
        hist = batch.get("action_history")
        if self.cfg.n_action_history and hist is None:
            raise KeyError("processed batch is missing 'action_history'")
        prefix, self_allowed = self.expert.prefix(batch["state"], hist, lang_tokens)
        masks = self.expert.build_masks(ctx_allowed, self_allowed, prefix.dtype)
        return {**enc, "ctx": ctx, "masks": masks, "prefix": prefix}

    def _denoise(
        self,
        enc: dict[str, object],
        x_t: torch.Tensor,
        t: torch.Tensor | list,
        hidden: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self.expert(x_t, t, enc["prefix"], enc["masks"], enc["ctx"], hidden, enc.get("goal_in"))

    # ---- training ------------------------------------------------------------------------------
    def compute_loss(
        self,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        goal_weight: float = 0.0,
        goal_noise: float = 0.0,
        goal_noise_frac: float = 0.5,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising loss on the normalised action chunk, ignoring padded steps, plus `goal_weight`
        x the grounding loss when the policy has a goal head and the batch carries `goal`.
        With the goal input, a `goal_noise_frac` share of the samples see their recorded goal moved
        horizontally by N(0, goal_noise^2) per axis [m] (see _teacher_goal). Returns (loss, info)."""
        if "actions" not in batch:
            raise KeyError("processed batch is missing 'actions' (training batches need them)")
        x0 = batch["actions"]  # (B, H, A)
        self._check_actions(x0, "actions")
        enc = self.encode(batch)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t, t, target = self.objective.training_pair(x0, noise, generator)
        if self.cfg.goal_input:
            enc["goal_in"] = self._teacher_goal(batch, goal_noise, goal_noise_frac, generator)
        use_goal = goal_weight > 0 and self.cfg.goal_dim > 0 and "goal" in batch
        hidden: list[torch.Tensor] | None = [] if use_goal else None
        pred = self._denoise(enc, x_t, t, hidden)
        err = (pred - target).pow(2).mean(-1)  # (B, H)
        pad = batch.get("action_is_pad")
        w = (~pad).float() if pad is not None else torch.ones_like(err)
        loss = (err * w).sum() / w.sum().clamp(min=1.0)
        gates = torch.cat([layer.gate().detach().flatten() for layer in self.expert.layers])
        info = {"loss": float(loss.detach()), "gate_mean": float(gates.mean())}
        if hidden:
            g_loss, g_info = self.goal_loss(self._goal_units(enc, hidden), batch["goal"], batch["goal_valid"])
            loss = loss + goal_weight * g_loss
            info.update(g_info)
        if use_goal and self.cfg.goal_pointer:
            p_loss, p_info = self._pointer_loss(enc, batch)
            loss = loss + goal_weight * p_loss
            info.update(p_info)
        return loss, info

    def compute_pointer_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The goal pointer's loss alone (training it with everything else fixed, TrainConfig
        train_only): the backbone runs, the action expert does not. info["loss"] is that loss."""
        if not self.cfg.goal_pointer:
            raise ValueError("this policy has no goal pointer (train it with goal_pointer)")
        for key in ("goal", "goal_valid"):
            if key not in batch:
                raise KeyError(
                    f"processed batch is missing {key!r} (the pointer's targets need goal_weight > 0)"
                )
        loss, info = self._pointer_loss(self.encode_backbone(batch), batch)
        return loss, {"loss": float(loss.detach()), **info}

    def _pointer_loss(
        self, enc: dict[str, object], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        # the pointer reads no arm joint, so "the target is about where the tool is" is no shortcut
        # for it: it also learns the frames close to their target (`goal_near`), which are the ones
        # the policy acts on at the end of every reach
        valid = batch["goal_valid"] | batch.get("goal_near", torch.zeros_like(batch["goal_valid"]))
        p_loss, p_info = self.goal_loss(self._pointer_units(enc), batch["goal"], valid)
        return p_loss, {
            f"pointer_{k.removeprefix('goal_')}": v for k, v in p_info.items() if k != "goal_frac"
        }

    GOAL_SCALE = 0.1  # [m] per unit of the goal head's output

    def _teacher_goal(
        self,
        batch: dict[str, torch.Tensor],
        noise: float = 0.0,
        frac: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The goal input in training (cfg.goal_input): the recorded goal, in GOAL_SCALE units, for
        every frame, also those whose loss target `goal_valid` masks (a tool already within
        goal_min_distance of it): when sampling, the head answers for every frame too. The state
        token, which the goal head reads, never attends to the action tokens, so the head's own
        prediction is not changed by this input and can replace it when sampling.

        `noise` > 0 [m]: a random `frac` of the samples get the goal moved horizontally by
        N(0, noise^2) per axis, while their action targets stay the demonstrated ones. A predicted
        goal is never exact (a few cm off at the end of a reach), and actions trained only on exact
        goals follow such an error; these samples teach them to find the object near the goal."""
        if "goal" not in batch:
            raise KeyError("goal_input needs the batch's 'goal' targets (train with goal_weight > 0)")
        goal = batch["goal"]
        if noise > 0:
            b = len(goal)
            offset = torch.randn(b, 2, generator=generator).to(goal) * noise
            moved = (torch.rand(b, generator=generator) < frac).to(goal)
            goal = goal + nn.functional.pad(offset * moved[:, None], (0, 1))
        return goal / self.GOAL_SCALE

    def _goal_units(self, enc: dict[str, object], hidden: list[torch.Tensor]) -> torch.Tensor:
        """The goal head on the state token (the last prefix token) of the expert's last layer:
        (B, 3) in units of GOAL_SCALE."""
        return self.goal_head(hidden[0][:, enc["prefix"].shape[1] - 1])

    def _pointer_units(self, enc: dict[str, object]) -> torch.Tensor:
        """The goal pointer on the backbone's tokens and the state entries it reads
        (cfg.goal_pointer_state): (B, 3) in units of GOAL_SCALE."""
        state = enc["state"][:, self.pointer_state]
        return self.goal_pointer(
            enc["features"], enc["lang"], enc["valid"], state, enc["points"], enc["maps"], enc["images"]
        )

    def goal_loss(
        self, units: torch.Tensor, goal: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Huber loss (in units of GOAL_SCALE) between the goal head's output `units` and the target
        position [m], over the samples that have one; info holds the mean error in cm."""
        v = valid.float()
        per = nn.functional.smooth_l1_loss(units, goal / self.GOAL_SCALE, reduction="none")
        g_loss = (per.sum(-1) * v).sum() / v.sum().clamp(min=1.0)
        dist = (units.detach() * self.GOAL_SCALE - goal).norm(dim=-1)
        n = int(v.sum())
        err_cm = float((dist * v).sum() / n * 100) if n else float("nan")
        return g_loss, {"goal_loss": float(g_loss.detach()), "goal_err_cm": err_cm, "goal_frac": n / len(v)}

    @torch.no_grad()
    def predict_goal(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3) the predicted goal position [m] for a processed batch (a diagnostic): the one
        sampling acts on, so the goal pointer's when the policy has one. The head reads the state
        token, which never sees the noisy actions but is modulated by the denoising time; training
        drew that time at random, this uses t = 0.5."""
        if not self.cfg.goal_dim:
            raise ValueError("this policy has no goal head (goal_dim 0)")
        if self.cfg.goal_pointer:  # the pointer reads the backbone only
            return self._pointer_units(self.encode_backbone(batch)) * self.GOAL_SCALE
        enc = self.encode(batch)  # (no goal input: the state token never sees the action tokens)
        B = batch["state"].shape[0]
        x = torch.randn((B, self.cfg.chunk_length, self.cfg.action_dim), generator=generator)
        return self._head_units(enc, x.to(batch["state"])) * self.GOAL_SCALE

    def _head_units(self, enc: dict[str, object], x: torch.Tensor) -> torch.Tensor:
        """The goal head's answer (B, 3) in GOAL_SCALE units: one expert pass over actions `x` at
        t = 0.5, whose state token (which never attends to `x`) the head reads."""
        hidden: list[torch.Tensor] = []
        self._denoise(enc, x, torch.full((x.shape[0],), 0.5).to(x), hidden)
        return self._goal_units(enc, hidden)

    # ---- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        batch: dict[str, torch.Tensor],
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoise a normalised action chunk (B, H, A). The backbone runs once; only the expert per step."""
        B = batch["state"].shape[0]
        shape = (B, self.cfg.chunk_length, self.cfg.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
        noise = noise.to(batch["state"])
        enc = self.encode(batch)
        if self.cfg.goal_input and "goal_override" in batch:  # (B, 3) [m], e.g. an oracle's
            enc["goal_in"] = batch["goal_override"].to(noise) / self.GOAL_SCALE
        elif self.cfg.goal_pointer:  # predict where (as predict_goal), then act towards it
            enc["goal_in"] = self._pointer_units(enc)
        elif self.cfg.goal_input:
            enc["goal_in"] = self._head_units(enc, noise)
        steps = num_steps or self.cfg.objective.inference_steps
        times = self.objective.step_times(steps)
        # time conditioning of all steps in one batched pass; each step then only indexes it
        allm = self.expert.time_conditioning(torch.tensor(times, dtype=noise.dtype, device=noise.device))

        def denoise(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            # (1, 1, W) gain/shift of step i, broadcast over the batch
            mods = [[(g[i : i + 1], b[i : i + 1]) for g, b in layer] for layer in allm]
            return self._denoise(enc, x, mods)

        return self.objective.sample(denoise, noise, steps)

    def _check_actions(self, x: torch.Tensor, name: str) -> None:
        want = (self.cfg.chunk_length, self.cfg.action_dim)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (B, {want[0]}, {want[1]})")

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def apply_backbone_mode(policy: APTPolicy) -> None:
    """Set requires_grad per the effective backbone mode (stage 1 always frozen).

    frozen: backbone weights fixed (necks/adapters that map raw encoder outputs stay trainable);
    lora: only LoRA A/B matrices of the backbone train; full: everything trains.
    Knowledge insulation stops the action loss where the encoders' outputs enter the neck, and
    this stack has no second objective to train them (docs/model.md), so in every mode its encoder
    weights, LoRA included, are fixed: no gradient could reach them, and fixed they need no graph
    and their outputs can come from the frozen-feature memo.
    """
    mode = policy.cfg.backbone_mode
    insulated = policy.cfg.variant == "knowledge_insulation"
    for name, p in policy.backbone.named_parameters():
        if name.startswith("neck."):
            p.requires_grad_(True)
        elif "lora_" in name:
            p.requires_grad_(mode == "lora" and not insulated)
        else:
            p.requires_grad_(mode == "full" and not insulated)
    for p in policy.expert.parameters():
        p.requires_grad_(True)
    if mode == "lora" and not any(isinstance(m, LoRALinear) for m in policy.backbone.modules()):
        raise RuntimeError("backbone mode 'lora' but no LoRA layers were injected")
