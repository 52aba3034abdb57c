"""Training and evaluation of loss-adjustment agents on lossgym (stable-baselines3 and friends).

Installed by the ``lossgym`` distribution beside ``lossgym`` itself; nothing in
``lossgym`` imports it.
"""
