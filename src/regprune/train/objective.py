"""The training objective every method that trains shares: LM loss, distillation from the unpruned model,
or a weighted sum, computed in chunks of tokens.

    loss = (1 - a) * LM + a * T^2 * KL(teacher_T || student_T)      a = 0 ("lm"), 1 ("kd"), kd_alpha ("mix")

LM is the mean next-token cross-entropy over the tokens that carry loss; KL(p || q) = sum_v p_v (log p_v -
log q_v) per token, averaged over the same tokens, with both distributions taken at temperature T (the T^2
keeps gradient sizes comparable across temperatures, as in Hinton et al.). Forward KL on the teacher's
logits at T = 1 is the Minitron recipe (arXiv 2407.14679), which beat cross-entropy in its ablation.

The teacher is the model *before* pruning, never modified (its parameters are frozen and it is only run
under no_grad). Two kinds:
- `LiveTeacher`: a frozen copy of the model, run on every batch (a second copy in memory, one more forward
  per step; exact).
- `CachedTeacher`: the teacher's top-k log-probabilities for every training window, computed once before
  training (the teacher can then be dropped; for k = vocab it equals the live teacher). The mass outside
  the top k is kept as one tail bucket: KL over the top-k tokens plus the bucket,
      sum_{i in K} p_i (log p_i - log q_i) + r (log r - log q_rest),  r = 1 - sum_K p_i,  q_rest = 1 - sum_K q_i,
  which is the KL of the two distributions coarsened to K + 1 outcomes (a lower bound of the full KL that
  is tight when r is small). Large caches are written to a memory-mapped file (`cache_dir`).

Memory. The student's logits are never materialized for the whole batch: the loss takes the final hidden
states and runs the LM head (in fp32), the logsumexp and the KL over `chunk_tokens` tokens at a time under
activation checkpointing, so only one chunk's few [chunk, vocab] fp32 tensors (logits, the teacher's
log-probs, a masked copy for the tail) exist at once, instead of several [batch, seq, vocab] tensors; by
default the chunk holds 2^26 / vocabulary tokens (256 MiB per such tensor, whatever the vocabulary).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import RegpruneError

log = logging.getLogger(__name__)

OBJECTIVES = ("lm", "kd", "mix")
TEACHERS = ("cached", "live")


def kd_alpha(objective: str, alpha: float) -> float:
    return {"lm": 0.0, "kd": 1.0}.get(objective, alpha)


CHUNK_ELEMENTS = 1 << 26  # default chunk: 2^26 logits = 256 MiB in fp32


def chunk_size(model, chunk_tokens: int | None) -> int:
    """Tokens per loss chunk: the given number, or as many as keep one [chunk, vocab] fp32 tensor at 256 MiB."""
    if chunk_tokens:
        return chunk_tokens
    vocab = _base(model).get_output_embeddings().weight.shape[0]
    return max(1, CHUNK_ELEMENTS // vocab)


def _base(model):
    """The causal LM under a peft wrapper (LoRA layers stay in its modules)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def final_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """[b, L, d] hidden states after the final norm (what the LM head reads)."""
    base = _base(model)
    return base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state


def head_logits(model, h: torch.Tensor) -> torch.Tensor:
    """fp32 logits of hidden states `h`; the LM head runs in fp32 even under autocast (the softmaxes and the
    KL of a large vocabulary need it)."""
    base = _base(model)
    head = base.get_output_embeddings()
    with torch.autocast(h.device.type, enabled=False):
        z = head(h.to(head.weight.dtype)).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        z = torch.tanh(z / cap) * cap
    return z


def _kd_full(s_logp: torch.Tensor, t_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(teacher || student) from both full log-probability tensors."""
    return (t_logp.exp() * (t_logp - s_logp)).sum(-1)


def _kd_topk(s_logp: torch.Tensor, idx: torch.Tensor, t_logp: torch.Tensor, t_tail: torch.Tensor) -> torch.Tensor:
    """Per-token KL between the teacher's top-k + tail bucket and the student coarsened the same way."""
    kl = (t_logp.exp() * (t_logp - s_logp.gather(-1, idx))).sum(-1)
    # log of the student's mass outside K, exactly (1 - sum_K q would lose it to rounding when it is small)
    s_tail = torch.logsumexp(s_logp.scatter(-1, idx, float("-inf")), dim=-1)
    r = t_tail.exp()
    tail = torch.where(r > 0, r * (t_tail - s_tail), torch.zeros_like(r))
    return kl + tail


@dataclass
class TeacherTargets:
    """What the teacher says about a batch's predicted tokens ([n] = b * (L - 1) flattened)."""

    logp: torch.Tensor  # [n, V] full log-probs (live) or [n, k] top-k log-probs (cached)
    idx: torch.Tensor | None = None  # [n, k] token ids of the top k (cached)
    tail: torch.Tensor | None = None  # [n] log of the mass outside the top k (cached)


class LiveTeacher:
    """A frozen copy of the unpruned model, run on every batch."""

    kind = "live"

    def __init__(self, model, temperature: float = 1.0):
        import copy

        self.model = copy.deepcopy(_base(model)).eval().requires_grad_(False)
        self.temperature = temperature

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return final_hidden(self.model, ids)[:, :-1].reshape(-1, self.model.config.hidden_size)

    @torch.no_grad()
    def chunk(self, h_t: torch.Tensor) -> TeacherTargets:
        return TeacherTargets(F.log_softmax(head_logits(self.model, h_t) / self.temperature, dim=-1))

    def subset(self, rows) -> "LiveTeacher":
        return self

    def describe(self) -> dict:
        return {"teacher": "live", "temperature": self.temperature}


class CachedTeacher:
    """Top-k log-probabilities of the unpruned model for a fixed set of windows, computed once."""

    kind = "cached"

    def __init__(self, idx: torch.Tensor, logp: torch.Tensor, tail: torch.Tensor, temperature: float, top_k: int,
                 vocab: int, windows: torch.Tensor, storage: str):
        self.idx, self.logp, self.tail = idx, logp, tail  # [n_windows, L-1, k], [.., k], [n_windows, L-1]
        self.temperature, self.top_k, self.vocab, self.storage = temperature, top_k, vocab, storage
        self.windows = windows  # the ids the cache belongs to (checked on every lookup)

    @classmethod
    @torch.no_grad()
    def build(cls, model, windows: torch.Tensor, *, top_k: int, temperature: float = 1.0, batch_size: int = 4,
              chunk_tokens: int | None = None, cache_dir: str | None = None, max_memory_bytes: int = 2 << 30):
        """Run `model` (the unpruned model; not modified) over every window once and keep its top k."""
        from tqdm.auto import tqdm

        model = _base(model)
        chunk_tokens = chunk_size(model, chunk_tokens)
        was_training = model.training
        model.eval()
        ids = windows[:, 0] if windows.dim() == 3 else windows
        n, L = ids.shape
        vocab = model.get_output_embeddings().weight.shape[0]
        k = min(top_k, vocab)
        nbytes = n * (L - 1) * (k * (8 + 4) + 4)
        storage = "memory"
        if nbytes > max_memory_bytes or cache_dir is not None:
            import numpy as np

            d = cache_dir or tempfile.gettempdir()
            os.makedirs(d, exist_ok=True)
            fd, path = tempfile.mkstemp(dir=d, prefix="regprune-teacher-", suffix=".bin")
            try:  # reserve the space now: a sparse file that runs out of disk later kills the process (SIGBUS)
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as e:
                os.close(fd)
                os.unlink(path)
                raise RegpruneError(f"the teacher cache needs {nbytes / 2**20:,.0f} MiB in {d} and cannot have it "
                                    f"({e.strerror or e}): give -O teacher_cache_dir=DIR on a larger disk, a smaller "
                                    "--teacher-top-k, or --teacher live") from None
            os.close(fd)
            mm = np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))
            os.unlink(path)  # freed when the mapping goes away; nothing left on disk after a crash
            off = n * (L - 1) * k * 8
            idx = torch.from_numpy(mm[:off].view(np.int64).reshape(n, L - 1, k))
            logp = torch.from_numpy(mm[off:off + n * (L - 1) * k * 4].view(np.float32).reshape(n, L - 1, k))
            tail = torch.from_numpy(mm[off + n * (L - 1) * k * 4:].view(np.float32).reshape(n, L - 1))
            storage = f"memory-mapped file in {d} ({nbytes / 2**20:.0f} MiB, removed when done)"
        else:
            idx = torch.empty(n, L - 1, k, dtype=torch.long)
            logp = torch.empty(n, L - 1, k)
            tail = torch.empty(n, L - 1)
        device = next(model.parameters()).device
        for s in tqdm(range(0, n, batch_size), desc=f"teacher top-{k} cache", leave=False):
            b = ids[s:s + batch_size].to(device)
            h = final_hidden(model, b)[:, :-1]
            flat = h.reshape(-1, h.shape[-1])
            rows_i, rows_p, rows_t = [], [], []
            for c in range(0, flat.shape[0], chunk_tokens):
                lp = F.log_softmax(head_logits(model, flat[c:c + chunk_tokens]) / temperature, dim=-1)
                top, ti = lp.topk(k, dim=-1)
                # The mass outside the top k, exactly (no tail at all when k is the whole vocabulary).
                tail_lp = (torch.logsumexp(lp.scatter(-1, ti, float("-inf")), dim=-1) if k < vocab
                           else torch.full_like(top[:, 0], float("-inf")))
                rows_i.append(ti.cpu())
                rows_p.append(top.cpu())
                rows_t.append(tail_lp.cpu())
            m = b.shape[0]
            idx[s:s + m] = torch.cat(rows_i).view(m, L - 1, k)
            logp[s:s + m] = torch.cat(rows_p).view(m, L - 1, k)
            tail[s:s + m] = torch.cat(rows_t).view(m, L - 1)
        model.train(was_training)
        return cls(idx, logp, tail, temperature, k, vocab, ids.clone(), storage)

    def subset(self, rows) -> "CachedTeacher":
        """The cache of some of the windows (a slice or row numbers), for a loop over only those."""
        return CachedTeacher(self.idx[rows], self.logp[rows], self.tail[rows], self.temperature, self.top_k,
                             self.vocab, self.windows[rows], self.storage)

    def rows(self, rows: torch.Tensor, ids: torch.Tensor) -> TeacherTargets:
        if not torch.equal(self.windows[rows], ids.cpu()):
            raise RuntimeError("teacher cache lookup with windows it was not built for")
        k = self.top_k
        return TeacherTargets(self.logp[rows].reshape(-1, k), self.idx[rows].reshape(-1, k),
                              self.tail[rows].reshape(-1))

    def describe(self) -> dict:
        mass = self.tail.exp()
        return {"teacher": "cached", "temperature": self.temperature, "top_k": self.top_k, "vocab": self.vocab,
                "tail_mass_mean": float(mass.mean()), "tail_mass_p99": float(mass.flatten().float().quantile(0.99))
                if mass.numel() <= 16_000_000 else None, "storage": self.storage}


def build_teacher(model, windows: torch.Tensor, cfg, shared: LiveTeacher | None = None, uses: int | None = None
                  ) -> LiveTeacher | CachedTeacher | None:
    """The teacher a TrainConfig asks for, from `model` as it is now (the unpruned model): None for "lm".
    `shared`: a live teacher of the same unpruned model made earlier (the recovery's), reused instead of a
    further copy."""
    if kd_alpha(cfg.objective, cfg.kd_alpha) == 0.0:
        return None
    if cfg.teacher == "live":
        if shared is not None and shared.temperature == cfg.kd_temperature:
            return shared
        return LiveTeacher(model, cfg.kd_temperature)
    log.info("teacher: caching the unpruned model's top-%d log-probabilities for %d windows", cfg.teacher_top_k,
             len(windows))
    if uses is None and cfg.steps is not None:
        uses = cfg.steps * cfg.batch_size * cfg.grad_accum
    if uses is not None and uses < len(windows):
        log.warning("teacher: %d windows are cached but the run uses only %d of them; --num-samples auto samples "
                    "as many as the run needs", len(windows), uses)
    return CachedTeacher.build(model, windows, top_k=cfg.teacher_top_k, temperature=cfg.kd_temperature,
                               batch_size=cfg.batch_size, chunk_tokens=cfg.loss_chunk_tokens,
                               cache_dir=cfg.teacher_cache_dir)


def _chunk_loss(model, h, labels, mask, alpha, temperature, live, h_t, t_logp, t_idx, t_tail):
    """Sums over one chunk of tokens: (masked LM NLL, masked T^2 * KL). The live teacher's logits are made
    here too, so that activation checkpointing keeps only hidden states between forward and backward.
    One log-softmax serves both terms at T = 1; the LM term, when only logged (alpha = 1), carries no graph."""
    z = head_logits(model, h)
    s_logp = F.log_softmax(z, dim=-1)
    with torch.set_grad_enabled(torch.is_grad_enabled() and alpha < 1):
        lm = (-s_logp.gather(-1, labels[:, None])[:, 0] * mask).sum()
    if alpha == 0:
        return lm, z.new_zeros(())
    if temperature != 1:
        s_logp = F.log_softmax(z / temperature, dim=-1)
    del z
    if live is not None:
        t_logp = live.chunk(h_t).logp
    kd = _kd_full(s_logp, t_logp) if t_idx is None else _kd_topk(s_logp, t_idx, t_logp, t_tail)
    return lm, (kd * mask).sum() * temperature ** 2


def objective_loss(model, ids: torch.Tensor, mask: torch.Tensor | None, *, alpha: float, temperature: float = 1.0,
                   teacher=None, rows: torch.Tensor | None = None, chunk_tokens: int | None = None
                   ) -> tuple[torch.Tensor, dict]:
    """(loss, {"lm_loss", "distill_loss"}) for a batch of windows `ids` [b, L]; `mask` [b, L] marks the tokens
    that carry loss (None: all); `rows`: the windows' row numbers in the training set (cached teacher).
    The LM loss is computed (and logged) whatever the objective."""
    chunk_tokens = chunk_size(model, chunk_tokens)
    h = final_hidden(model, ids)[:, :-1]
    flat = h.reshape(-1, h.shape[-1])
    labels = ids[:, 1:].reshape(-1)
    m = (torch.ones_like(labels, dtype=torch.float32) if mask is None
         else mask[:, 1:].reshape(-1).to(torch.float32))
    n_tok = m.sum().clamp_min(1.0)
    targets = live = h_t = None
    if alpha > 0:
        if teacher is None:
            raise ValueError("a distillation objective needs a teacher")
        if teacher.kind == "cached":
            targets = teacher.rows(rows, ids)
        else:
            live, h_t = teacher, teacher.hidden(ids)
    lm_sum, kd_sum = flat.new_zeros(()), flat.new_zeros(())
    for c in range(0, flat.shape[0], chunk_tokens):
        sl = slice(c, c + chunk_tokens)
        cached = ((targets.logp[sl].to(flat.device), targets.idx[sl].to(flat.device),
                   targets.tail[sl].to(flat.device)) if targets is not None else (None, None, None))
        args = (flat[sl], labels[sl], m[sl], alpha, temperature, live, None if h_t is None else h_t[sl], *cached)
        if torch.is_grad_enabled() and flat.requires_grad:
            lm, kd = checkpoint(lambda *a: _chunk_loss(model, *a), *args, use_reentrant=False)
        else:
            lm, kd = _chunk_loss(model, *args)
        lm_sum, kd_sum = lm_sum + lm, kd_sum + kd
    lm_loss, kd_loss = lm_sum / n_tok, kd_sum / n_tok
    loss = lm_loss if alpha == 0 else kd_loss if alpha == 1 else (1 - alpha) * lm_loss + alpha * kd_loss
    parts = {"lm_loss": float(lm_loss.detach()), "distill_loss": float(kd_loss.detach()) if alpha > 0 else None}
    return loss, parts


def prepare_teacher(model, windows: torch.Tensor, cfg, calib=None, uses: int | None = None) -> tuple[object, dict]:
    """A method's teacher for its training windows (build_teacher, sharing the calibration data's live
    teacher when there is one) and the description of the objective for the record."""
    teacher = build_teacher(model, windows, cfg, getattr(calib, "shared_teacher", None), uses)
    return teacher, describe_objective(cfg, teacher)


def describe_objective(cfg, teacher=None) -> dict:
    a = kd_alpha(cfg.objective, cfg.kd_alpha)
    out = {"objective": cfg.objective, "kd_alpha": a, "loss": "(1 - a) * LM + a * T^2 * KL(teacher_T || student_T)",
           "kd_temperature": cfg.kd_temperature,
           "chunk_tokens": cfg.loss_chunk_tokens or f"auto ({CHUNK_ELEMENTS} / vocabulary)"}
    if teacher is not None:
        out.update(teacher.describe())
    return out


__all__ = ["OBJECTIVES", "TEACHERS", "LiveTeacher", "CachedTeacher", "build_teacher", "prepare_teacher",
           "objective_loss",
           "describe_objective", "kd_alpha", "final_hidden", "head_logits"]
