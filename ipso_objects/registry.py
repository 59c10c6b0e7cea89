"""The object registry: shipped DDFs merged with folders an operator names."""

from __future__ import annotations

from importlib import resources as package_files
from pathlib import Path
from typing import Iterable, Iterator

from .ddf import load_ddf, load_ddf_file
from .errors import DdfError, NotADdfError
from .model import ObjectDef, ResourceDef, ResourceType
from .path import LwM2MPath

TINYML_OBJECT_ID = 26241
"""Our TinyML Capability object, first id of the private range 26241..32768."""


class ObjectRegistry:
    """Object definitions by id and version.

    Each object id keeps every version loaded; :meth:`get` without a version
    returns the one added last, so a folder added after the shipped DDFs
    overrides them.
    """

    def __init__(self, objects: Iterable[ObjectDef] = ()) -> None:
        self._versions: dict[int, dict[str, ObjectDef]] = {}
        self._preferred: dict[int, ObjectDef] = {}
        self.generation = 0
        """Counts the changes (:meth:`add`): what a cache of lookups keys on."""
        for definition in objects:
            self.add(definition)

    @classmethod
    def default(cls, folders: Iterable[str | Path] = ()) -> ObjectRegistry:
        """The shipped DDFs, then each folder in ``folders`` in order."""
        registry = cls()
        shipped = package_files.files(__package__).joinpath("definitions")
        for entry in sorted(shipped.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".xml"):
                for definition in load_ddf(entry.read_bytes(), source=f"shipped {entry.name}"):
                    registry.add(definition)
        for folder in folders:
            registry.load_folder(folder)
        return registry

    def add(self, definition: ObjectDef) -> None:
        """Add (or replace) one object definition and make it the preferred version."""
        self._versions.setdefault(definition.id, {})[definition.version] = definition
        self._preferred[definition.id] = definition
        self.generation += 1

    def load_folder(self, folder: str | Path) -> list[ObjectDef]:
        """Load every DDF (``*.xml`` with an ``<LWM2M>`` root) of ``folder``.

        Other XML documents, such as the OMA registry's ``DDF.xml`` index, are
        skipped; the first malformed DDF raises :class:`DdfError` and nothing
        of the folder is added.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise DdfError("not a directory", source=str(folder))
        loaded: list[ObjectDef] = []
        for file in sorted(folder.glob("*.xml")):
            try:
                loaded.extend(load_ddf_file(file))
            except NotADdfError:
                continue
        for definition in loaded:
            self.add(definition)
        return loaded

    def get(self, object_id: int, version: str | None = None) -> ObjectDef | None:
        """The definition of ``object_id`` (of ``version`` when that one is known)."""
        if version is not None:
            exact = self._versions.get(object_id, {}).get(version)
            if exact is not None:
                return exact
        return self._preferred.get(object_id)

    def versions(self, object_id: int) -> list[str]:
        """Every version known for ``object_id``."""
        return sorted(self._versions.get(object_id, {}))

    def resource_def(self, path: LwM2MPath) -> ResourceDef | None:
        """The definition of the resource ``path`` points into (``/o/i/r`` or deeper)."""
        if len(path) < 3:
            return None
        definition = self._preferred.get(path.ids[0])
        return definition.resource(path.ids[2]) if definition is not None else None

    def value_type(self, path: LwM2MPath) -> ResourceType | None:
        """The data type of values at ``path``; None when the model does not say."""
        resource = self.resource_def(path)
        if resource is None or resource.type is ResourceType.NONE:
            return None
        return resource.type

    def __iter__(self) -> Iterator[ObjectDef]:
        return iter(sorted(self._preferred.values(), key=lambda d: d.id))

    def __len__(self) -> int:
        return len(self._preferred)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._preferred
