"""LoRA fine-tuning, for ``accelerate launch``: the same trainer as ``vidgen train-lora``.

    accelerate launch scripts/train_lora.py --config configs/lora_example.yaml [--train.max_steps 300]
"""

from vidgen.training.train_lora import main

if __name__ == "__main__":
    main()
