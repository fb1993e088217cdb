"""A stand-in alarm receiving centre: pysiaalarm's SIAClient on a port, printing each event it
ACKs as one JSON line on stdout (and "READY" once listening). The key, if given, is what
pysiaalarm takes: 16, 24 or 32 ASCII characters used as the raw AES key bytes.

usage: sia_arc.py PORT tcp|udp ACCOUNT [KEY]
"""
import asyncio
import json
import sys

from pysiaalarm import CommunicationsProtocol, SIAAccount
from pysiaalarm.aio import SIAClient
from pysiaalarm.aio.server import SIAServerUDP


def _udp_connection_made(self, transport):
    # pysiaalarm 3.2.2 asserts the transport is an asyncio.DatagramTransport, which the selector
    # transport of Python 3.11 is not; the assertion fails and it never answers over UDP.
    self.transport = transport


SIAServerUDP.connection_made = _udp_connection_made


async def main():
    port, proto, account = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    key = sys.argv[4] if len(sys.argv) > 4 else None
    protocol = CommunicationsProtocol.UDP if proto == "udp" else CommunicationsProtocol.TCP

    async def on_event(event):
        print(json.dumps({
            "account": event.account,
            "sequence": event.sequence,
            "code": event.code,
            "message": event.message,
            "ri": event.ri,
            "x_data": event.x_data,
            "encrypted": bool(event.encrypted),
            "timestamp": event.timestamp.isoformat() if event.timestamp else None,
        }), flush=True)

    client = SIAClient("127.0.0.1", port, [SIAAccount(account, key)], on_event, protocol=protocol)
    await client.async_start()
    print("READY", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
