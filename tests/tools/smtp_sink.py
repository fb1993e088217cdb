"""A mail server for the tests: aiosmtpd (an independent SMTP implementation) on 127.0.0.1:PORT,
writing each message it takes to OUTDIR as NNNN.eml, then printing its file name. Prints READY
once it listens.

    python smtp_sink.py PORT OUTDIR
"""

import asyncio
import itertools
import pathlib
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, outdir: pathlib.Path):
        self.outdir = outdir
        self.count = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        # A sink started again on the same folder goes on after the files already there.
        path = self.outdir / f"{next(self.count):04}.eml"
        while path.exists():
            path = self.outdir / f"{next(self.count):04}.eml"
        path.write_bytes(envelope.original_content or envelope.content)
        print(f"MAIL {path.name} from={envelope.mail_from} to={','.join(envelope.rcpt_tos)}", flush=True)
        return "250 Message accepted for delivery"


def main() -> None:
    port, outdir = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    outdir.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(outdir), hostname="127.0.0.1", port=port)
    controller.start()
    print("READY", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
