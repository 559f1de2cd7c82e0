"""A synthetic world of emoji scenes whose every box and every caption word's referent is known.

``generate_scene(seed)`` draws one image (stuff regions plus sprite objects) and five captions whose words
link to the boxes they name; ``write_world`` writes train/dev/test splits in the SCAN precomp layout.
"""
from scan_viz.scenes.generate import DEFAULT_SIZE, generate_scene
from scan_viz.scenes.types import WORD_TYPES, Caption, Scene, SceneObject, WordLink
from scan_viz.scenes.world import SPLITS, write_world

__all__ = ["DEFAULT_SIZE", "SPLITS", "WORD_TYPES", "Caption", "Scene", "SceneObject", "WordLink", "generate_scene",
           "write_world"]
