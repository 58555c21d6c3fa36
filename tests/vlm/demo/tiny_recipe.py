"""The teacher recipe the resume and worker tests train: every stage for a few steps, with the curriculum."""

from vlm.demo.recipe import SessionMix, TeacherTrainConfig

TINY = TeacherTrainConfig(
    vision_steps=3,
    letter_steps=2,
    letter_batch_size=4,
    vqa_steps=4,
    batch_size=2,
    session=SessionMix(turns=2),
    warmup_steps=1,
    first_kinds=("presence",),
    first_steps=2,
)
