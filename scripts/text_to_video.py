"""Text-to-video from the command line; also runs under `accelerate launch`.

python scripts/text_to_video.py --model PATH --prompt "a red circle moves right" --output out.mp4
accelerate launch scripts/text_to_video.py --model PATH --prompt "..." --output out.mp4
"""

import sys

from vidgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["t2v", *sys.argv[1:]]))
