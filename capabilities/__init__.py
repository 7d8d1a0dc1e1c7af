"""The built-in capabilities, each a package of its own, registered through the
idp.capabilities entry-point group."""

# What an expectation (`Capability.expect`) holds for a value that only the apply learns: the
# key Synadia draws, the commit git makes. No real id, key or commit looks like it, so the plan
# of a capability that compares against it sees the change that is coming, and a person reading
# `idpctl diff` sees that it is not known yet rather than a guess.
ASSIGNED_ON_APPLY = "(assigned on apply)"
