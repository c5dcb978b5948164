"""Model names and architecture constants that need no torch (the workflow imports them).

* :data:`SPEC_PATTERN`: a VTN cascade spec, ``"A"`` or ``A?D+`` (``"D"``, ``"AD"``, ``"ADDD"``);
  :func:`vtn.networks.check_spec` and the config schema use it.
* :data:`VOXELMORPH2_ENC_NF` / :data:`VOXELMORPH2_DEC_NF`: the VoxelMorph-2 widths of the CVPR
  2018 ``cvpr2018_net`` (the defaults of :class:`vtn.networks.VoxelMorph2`, quoted in the report).
"""

from __future__ import annotations

SPEC_PATTERN = r"^(A|A?D+)$"
VOXELMORPH2_ENC_NF = (16, 32, 32, 32)
VOXELMORPH2_DEC_NF = (32, 32, 32, 32, 32, 16, 16)
