"""The ``"otofx.*"`` keys passes talk through: what each holds, who writes it, who reads it.

Passes never call each other for results; a pass writes ``node.meta[KEY]`` (per node) or
``gm.meta[KEY]`` (per graph) and a later one reads it. This module is the whole contract, one
constant per key, so a reader finds here what a pass needs before it runs and what it leaves.

Per node (``node.meta``):

======================  ================  =====================================================
key                     written by        holds / read by
======================  ================  =====================================================
``SHAPE``               shapes pass       a ``torch.Size`` per tensor (a tuple of them for a
                                          tuple output, else None); channels, groups, erasable,
                                          shrink (``ShrinkContext.old_shape``)
``DTYPE``               shapes pass       the ``torch.dtype`` (a tuple likewise); erasable (its
                                          random inputs), the shapes pass's error message
``LABELS``              channels pass     the node's labels (``passes.labels``: a label tensor, a
                                          tuple of them, a ``SizeDep`` for a python size, or
                                          None); groups, erasable, shrink
``DIMS``                groups pass       each dim's size as a sympy expression in the groups'
                                          kept counts; ``otofx.cost``
``STRUCTURE``           erasable pass     names of the structures whose region holds the node;
                                          for people and tests (``Analysis.structures`` is the
                                          list)
======================  ================  =====================================================

Per graph (``gm.meta``):

======================  ================  =====================================================
key                     written by        holds / read by
======================  ================  =====================================================
``VALUES``              shapes pass       with ``keep_values``: the inputs of nodes whose rule
                                          may record a consumer site, and the version each had
                                          when read; dropped by ``capture.reference_pass``
``OUTPUT``              shapes pass       with ``keep_values``: the graph's output on the
                                          example inputs; ``capture.reference_pass``
``TABLE``               channels pass     the ``ChannelTable`` (``passes.table``); groups,
                                          capture, erasable, shrink
``GROUPS``              groups pass       the list of ``PruningGroup``; ``otofx.analyze``
                                          (``Analysis.groups``), capture, erasable, shrink
``REFERENCE``           capture pass      the analysis run kept for shrink
                                          (``capture.Reference``); shrink
``STRUCTURES``          erasable pass     the list of ``ErasableStructure``, outer ones first;
                                          ``Analysis.structures``, erase
``EXPORTED``            export front end  True when the graph came through ``torch.export``;
                                          ``otofx.integrations.hf``
``INPUTS_KEPT``         params_as_attrs   positions of the original inputs the new graph still
                                          takes; ``otofx.backend``
``LIFTED``              params_as_attrs   input position -> attribute path of each parameter
                                          dynamo had lifted to an input; tests
``SHRINK``              ``otofx.shrink``  the ``ShrinkStats`` of the smaller module it returns;
                                          ``otofx.report``, the CLI, ``otofx.backend``
======================  ================  =====================================================
"""

from __future__ import annotations

SHAPE = "otofx.shape"
DTYPE = "otofx.dtype"
LABELS = "otofx.labels"
DIMS = "otofx.dims"
STRUCTURE = "otofx.structure"

VALUES = "otofx.values"
OUTPUT = "otofx.output"
TABLE = "otofx.table"
GROUPS = "otofx.groups"
REFERENCE = "otofx.reference"
STRUCTURES = "otofx.structures"
EXPORTED = "otofx.exported"
INPUTS_KEPT = "otofx.inputs_kept"
LIFTED = "otofx.lifted"
SHRINK = "otofx.shrink"
