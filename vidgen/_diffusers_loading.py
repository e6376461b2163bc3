"""Make diffusers' pipeline loader treat ``vidgen`` as a component library, like ``transformers``.

``save_pretrained`` then records vidgen components as ``["vidgen", "ClassName"]`` in
``model_index.json``, and ``from_pretrained`` imports them from the ``vidgen`` package. diffusers'
loader finds each component's load method through the base classes that the library exposes under
their own names, so ``vidgen`` re-exports ``ModelMixin`` and ``SchedulerMixin``.
"""

from diffusers.pipelines import pipeline_loading_utils

VIDGEN_LOADABLE_CLASSES = {
    "ModelMixin": ["save_pretrained", "from_pretrained"],
    "SchedulerMixin": ["save_pretrained", "from_pretrained"],
}


def register() -> None:
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault("vidgen", VIDGEN_LOADABLE_CLASSES)
