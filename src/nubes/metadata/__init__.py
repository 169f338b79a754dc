"""The metadata service at 169.254.169.254: OpenStack and EC2 paths, answered per instance.

Which instance asks is known from where the request came in (the network's bridge) and its
source address, which the per-port anti-spoofing rules tie to that port. Nothing the guest can
send in the request (headers, query) plays any part.
"""

from nubes.metadata.content import METADATA_IP, Answer, InstanceMeta, MetadataTable, answer, lookup

__all__ = ["METADATA_IP", "Answer", "InstanceMeta", "MetadataTable", "answer", "lookup"]
