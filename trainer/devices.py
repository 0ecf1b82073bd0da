"""The optional ``device`` column of the interaction logs: the device of each interaction, as the server's
``Context.device`` codes (``recserve.pipeline.messages.DEVICES``), the ranker's ``ctx.device`` feature.

A cell holds a device name (``desktop``, ``mobile``, ``tablet``, ``tv``; ``unspecified`` or empty for
none; any case, blanks around it allowed) or its code (0..4, as the proto's ``Device`` enum numbers them).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recserve.pipeline.messages import DEVICES

NAMES = {name: code for code, name in enumerate(DEVICES)}
NAMES.update({str(code): code for code in range(len(DEVICES))})
NAMES[""] = 0


def device_codes(t: pa.Table) -> tuple[np.ndarray | None, str | None]:
    """The interactions' ``device`` column as (int8 codes, None), all 0 when the table has none; or (None, the
    reason in a few words) when a value is no device."""
    if "device" not in t.column_names:
        return np.zeros(t.num_rows, np.int8), None
    c = t.column("device")
    if pa.types.is_integer(c.type) or pa.types.is_floating(c.type):
        # unsafe: an integer beyond 2^53 becomes a float that is no code either, refused below
        a = pc.fill_null(pc.cast(c, pa.float64(), safe=False), 0.0).to_numpy(zero_copy_only=False)
        bad = ~np.isin(a, np.arange(len(DEVICES)))
        if bad.any():
            return None, (f"has {int(bad.sum())} value(s) that are no device code 0..{len(DEVICES) - 1}, "
                          f"e.g. {a[bad][0]:g}")
        return a.astype(np.int8), None
    try:
        text = pc.fill_null(pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(c, pa.string()))), "")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None, f"is not text or numbers (type {c.type})"
    values = np.asarray(text.to_numpy(zero_copy_only=False), object)
    uniq, inverse = np.unique(values, return_inverse=True)
    unknown = [u for u in uniq if u not in NAMES]
    if unknown:
        return None, (f"has {len(unknown)} unknown device name(s), e.g. {unknown[0][:60]!r} (expected "
                      f"{', '.join(DEVICES[1:])}, unspecified or empty, or a code 0..{len(DEVICES) - 1})")
    return np.array([NAMES[u] for u in uniq], np.int8)[inverse], None
