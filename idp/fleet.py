"""What a workload publishes for the fleet observer, in its IdpFleet search attribute: one entry
per capability, 'capability key digest', and one for the platform file it planned with. The
engine writes them, the observer's sweep reads them (docs/fleet.md)."""

from idp.capability import Fingerprint

# No capability name starts with '@' (entry-point names are identifiers).
PLATFORM = "@platform"
# Temporal refuses a search attribute value over 2 KB by default (limit.searchAttributeValueSize),
# failing the workflow task that sets it; entries that would not fit leave the workload unwatched.
MAX_BYTES = 1800


def fits(entries: list[str]) -> bool:
    """Whether the entries fit in one search attribute value, as JSON, with room to spare."""
    return sum(len(e.encode()) + 3 for e in entries) + 2 <= MAX_BYTES


def entry(capability: str, fingerprint: Fingerprint) -> str:
    return f"{capability} {fingerprint.key} {fingerprint.digest}"


def platform_entry(digest: str) -> str:
    return f"{PLATFORM} - {digest}"


def parse(entries: list[str]) -> dict[str, Fingerprint]:
    """The entries by capability (the platform's under PLATFORM); keys and digests hold no
    whitespace (Fingerprint refuses it), so each entry splits in three."""
    parsed = {}
    for line in entries:
        name, key, digest = line.split(" ")
        parsed[name] = Fingerprint(key=key, digest=digest)
    return parsed
