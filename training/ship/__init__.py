"""Stage 4, ship: turn a trained checkpoint into a served model.

``card`` writes the model card into the checkpoint and beside it (``python -m training.ship.card``),
``quantize`` calibrates and validates the int8 engines (``python -m training.ship.quantize``),
``temperature`` stores a cross-fitted temperature (``python -m training.ship.temperature``), and
``fundus_v2.sh`` (v2) and ``fundus.sh`` (v3 on, with ``CK`` and ``VERSION``) are the recorded recipes
of the shipped fundus model.
Every module here is a command; nothing imports them.
"""
