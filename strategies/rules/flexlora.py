"""FlexLoRA: heterogeneous ranks through the exact product, truncated by SVD.

Per LoRA module, W = sum_k p_k s_k B_k A_k over the clients holding it (p_k: example weights
over those clients, s_k = alpha_k / r_k): the exact weight delta, of rank <= sum_k r_k.

Convention: the global state stores each module at the global rank R (the rank of the global
factors, i.e. the largest tier's) with scale 1 and in SVD form: B_g = U_R S_R, A_g = Vt_R, so
B_g A_g is the best rank-R approximation of W (exact when rank W <= R) and A_g has orthonormal
rows. A client at rank r and scale s gets B = U_r S_r / s, A = Vt_r, so s B A is the best
rank-r approximation. A holds the singular directions (never zero, so a fresh B = 0 still
trains) and B the magnitudes. The SVD is taken on the factors (QR of each side, SVD of a small
core), never on the out x in product, so a 7B module costs milliseconds, not seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from famflow.strategies.rules.base import (
    ClientUpdate,
    State,
    check_global_pairs,
    check_slice_keys,
    check_slice_rank,
    check_update,
    copy_state,
    dense_keys,
    holder_weights,
    is_lora_key,
    logger,
    lora_modules,
    lora_rank,
    weighted_mean_per_key,
)


def thin_svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.linalg.svd``; LAPACK's divide and conquer fails to converge on rare matrices (seen
    on DP-noised updates), and then the SVD of the transpose, which usually converges, is used."""
    try:
        return np.linalg.svd(matrix, full_matrices=False)
    except np.linalg.LinAlgError:
        u_t, s, vt_t = np.linalg.svd(matrix.T, full_matrices=False)
        return vt_t.T, s, u_t.T


def factored_svd(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``U, S, Vt`` of ``b @ a`` (out x m times m x in) without forming the product."""
    q_b, r_b = np.linalg.qr(b.astype(np.float64))
    q_a, r_a = np.linalg.qr(a.astype(np.float64).T)
    u, s, vt = thin_svd(r_b @ r_a.T)
    u, vt = q_b @ u, vt @ q_a.T
    # Each singular pair is defined up to a joint sign; fix it (largest |entry| of each row of
    # Vt positive) so that the same product always gives the same factors (resume, replays).
    rows = np.arange(vt.shape[0])
    signs = np.sign(vt[rows, np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return u * signs, s, vt * signs[:, None]


def stored_svd(
    b: np.ndarray, a: np.ndarray, tolerance: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``U, S, Vt`` of ``b @ a`` read off factors already in the stored SVD form (``a`` with
    orthonormal rows, ``b`` with orthogonal columns of non-increasing norm), else None.

    Every global FlexLoRA aggregated is in that form, so slicing and aggregating it need no
    QR or SVD; the fresh adapters of the first round are not, and go through
    ``factored_svd``.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not np.allclose(a64 @ a64.T, np.eye(a.shape[0]), rtol=0.0, atol=tolerance):
        return None
    gram = b64.T @ b64
    squares = np.diag(gram).copy()
    largest = max(float(squares.max(initial=0.0)), np.finfo(np.float64).tiny)
    if np.abs(gram - np.diag(squares)).max(initial=0.0) > tolerance * largest:
        return None
    s = np.sqrt(squares)
    if np.any(np.diff(s) > tolerance * s.max(initial=0.0)):
        return None
    return b64 / np.where(s > 0, s, 1.0), s, a64


def global_svd(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``stored_svd`` where the factors are in stored form, else ``factored_svd``."""
    stored = stored_svd(b, a)
    return stored if stored is not None else factored_svd(b, a)


def truncated_factors(
    u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, A)`` at ``rank`` with ``scale * B @ A`` the rank-``rank`` truncation (float32)."""
    kept = min(rank, s.shape[0])
    b = np.zeros((u.shape[0], rank), dtype=np.float64)
    a = np.zeros((rank, vt.shape[1]), dtype=np.float64)
    b[:, :kept] = u[:, :kept] * (s[:kept] / scale)
    a[:kept] = vt[:kept]
    if kept < rank:
        logger.debug("rank %d exceeds min(out, in) = %d: padded with zeros", rank, kept)
    return b.astype(np.float32), a.astype(np.float32)


def _weighted_factors(
    updates: list[ClientUpdate], module: str, changes: bool = False
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(B_cat, A_cat)`` with ``B_cat @ A_cat = sum_k p_k s_k B_k A_k`` over the holders, or
    with ``changes`` ``sum_k p_k s_k (B_k A_k - B0_k A0_k)`` (``B0_k, A0_k``: its start)."""
    holders, weights = holder_weights(updates, f"{module}.A")
    if not holders:
        return None
    b_parts, a_parts = [], []
    for i, weight in zip(holders, weights, strict=True):
        update = updates[i]
        pairs = [(update.arrays, 1.0)]
        if changes:
            assert update.start is not None
            pairs.append((update.start, -1.0))
        for arrays, sign in pairs:
            b_parts.append(sign * weight * update.scale * arrays[f"{module}.B"].astype(np.float64))
            a_parts.append(arrays[f"{module}.A"].astype(np.float64))
    return np.concatenate(b_parts, axis=1), np.concatenate(a_parts, axis=0)


def _starts_known(updates: list[ClientUpdate], module: str) -> bool:
    holding = [u for u in updates if f"{module}.A" in u.arrays]
    return all(
        u.start is not None and f"{module}.A" in u.start and f"{module}.B" in u.start
        for u in holding
    )


def _matches(found: np.ndarray, expected: np.ndarray) -> bool:
    """Equal up to float32 rounding, relative to ``expected``'s largest entry."""
    if found.shape != expected.shape:
        return False
    scale = max(float(np.abs(expected).max(initial=0.0)), np.finfo(np.float32).tiny)
    return bool(np.allclose(found, expected, rtol=0.0, atol=1e-6 * scale))


def _kept_by_starts(
    updates: list[ClientUpdate], module: str, b_g: np.ndarray, a_g: np.ndarray
) -> np.ndarray | None:
    """``kept`` with ``W - sum_k p_k S_k = B_g diag(kept) A_g`` where every holder's start
    ``S_k`` is the rank-``r_k`` truncation of the stored global (``kept_i = 1 - sum_k p_k``
    over the holders whose rank exceeds i), so the starts need no factors of their own; None
    where some start is not such a truncation (the first round's fresh adapters)."""
    if stored_svd(b_g, a_g) is None:
        return None
    holders, weights = holder_weights(updates, f"{module}.A")
    kept = np.ones(b_g.shape[1], dtype=np.float64)
    for i, weight in zip(holders, weights, strict=True):
        start = updates[i].start
        assert start is not None
        start_a = start[f"{module}.A"].astype(np.float64)
        rank = start_a.shape[0]
        start_b = updates[i].scale * start[f"{module}.B"].astype(np.float64)
        # A start above the global rank cannot match: its slice of B_g or A_g is narrower.
        if not (_matches(start_a, a_g[:rank]) and _matches(start_b, b_g[:, :rank])):
            return None
        kept[:rank] -= weight
    return kept


def lora_products(updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
    """Per module, the exact ``sum_k p_k s_k B_k A_k`` over its holders (dense, float32)."""
    products: dict[str, np.ndarray] = {}
    for module in lora_modules(key for update in updates for key in update.arrays):
        factors = _weighted_factors(updates, module)
        if factors is not None:
            products[module] = (factors[0] @ factors[1]).astype(np.float32)
    return products


@dataclass(frozen=True)
class FlexLoRA:
    """Exact weighted product per module, truncated SVD back to the global and client ranks.

    ``from_changes`` (where every holder's start is known): the global product moves by the
    holders' weighted mean change of their product, ``W + sum_k p_k (s_k B_k A_k - S_k)``
    with ``S_k`` the rank-``r_k`` truncation of ``W`` that node k started from. Where every
    holder starts from ``W`` itself this is the mean product; a low-rank holder no longer
    erases the directions of ``W`` beyond its rank, which its start could not carry.
    """

    name: str = "flexlora"
    on_products: bool = True
    exchanges_a: bool = True
    mixed_ranks: bool = True
    from_changes: bool = True

    def validate(self, global_arrays: State, update: ClientUpdate) -> None:
        check_update(global_arrays, update, self.name, same_rank=False, pairs=True)

    def aggregate(self, global_arrays: State, updates: list[ClientUpdate]) -> State:
        check_global_pairs(global_arrays)
        for update in updates:
            self.validate(global_arrays, update)
        state = copy_state(global_arrays)
        state.update(weighted_mean_per_key(updates, dense_keys(global_arrays)))
        for module in lora_modules(global_arrays):
            changes = self.from_changes and _starts_known(updates, module)
            b_g, a_g = global_arrays[f"{module}.B"], global_arrays[f"{module}.A"]
            kept = _kept_by_starts(updates, module, b_g, a_g) if changes else None
            factors = _weighted_factors(updates, module, changes and kept is None)
            if factors is None:
                continue
            # From changes, W_new = W + mean change: what a low-rank holder's truncated start
            # left out of W stays (the starts folded into W's own factors where ``kept``).
            # Otherwise the old directions get zero weight: W is the mean product, and
            # rank W < R still yields R orthonormal rows of A (so every rank of every tier
            # keeps training).
            old_weight = kept if kept is not None else (1.0 if changes else 0.0)
            b_cat = np.concatenate([factors[0], old_weight * b_g.astype(np.float64)], axis=1)
            a_cat = np.concatenate([factors[1], a_g.astype(np.float64)], axis=0)
            u, s, vt = factored_svd(b_cat, a_cat)
            state[f"{module}.B"], state[f"{module}.A"] = truncated_factors(
                u, s, vt, lora_rank(global_arrays, module), scale=1.0
            )
        return state

    def slice_for(
        self, global_arrays: State, keys: Iterable[str], rank: int, scale: float
    ) -> State:
        keys = check_slice_keys(global_arrays, keys, rank)
        check_global_pairs(global_arrays)
        sliced = copy_state({key: global_arrays[key] for key in keys if not is_lora_key(key)})
        for module in lora_modules(keys):
            check_slice_rank(global_arrays, module, rank)
            u, s, vt = global_svd(global_arrays[f"{module}.B"], global_arrays[f"{module}.A"])
            b, a = truncated_factors(u, s, vt, rank, scale)
            sliced.update({f"{module}.B": b, f"{module}.A": a})
        return {key: sliced[key] for key in keys}
