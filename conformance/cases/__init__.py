"""The conformance cases, one module per part of the spec.  Importing this
package registers every case in :data:`conformance.case.CASES`."""

from __future__ import annotations

from . import delivery as delivery
from . import files as files
from . import framing as framing
from . import handshake as handshake
from . import login as login
from . import messaging as messaging
from . import recall as recall
from . import records as records
from . import sync as sync
from . import vectors as vectors
