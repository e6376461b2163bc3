"""Image-to-video from the command line; also runs under `accelerate launch`.

python scripts/image_to_video.py --model PATH --image first.png --prompt "..." --output out.mp4
accelerate launch scripts/image_to_video.py --model PATH --image first.png --prompt "..." --output out.mp4
"""

import sys

from vidgen.cli import main

if __name__ == "__main__":
    sys.exit(main(["i2v", *sys.argv[1:]]))
