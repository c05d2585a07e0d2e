"""Verification: every sentence of an answer checked against the passages it was given (verifier.py, scored by
score.py over sentence spans from sentences.py), and quote mode, an answer made of the passages' own sentences
(quote.py)."""
