"""TOVA attention backends: they write K/V themselves, score, evict and reuse freed slots."""
