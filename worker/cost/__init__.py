"""What a job costs: estimated (a configured price table), billed (fal's units x unit price).

``price_table`` and ``estimate`` serve the estimate at enqueue and budgets before fal
answers; ``pricing`` reads fal's unit price; ``billed`` turns what fal reported into money,
keeping "unknown" (None) apart from zero and "possibly billed" apart from both.
"""
