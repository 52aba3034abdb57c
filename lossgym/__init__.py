"""lossgym: learn how to adapt a classifier's loss while it trains."""
