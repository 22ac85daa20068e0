"""One run: build it from a config (:mod:`.build`), loop over its rounds (:mod:`.loop`) with
callbacks after each (:mod:`.callbacks`), checkpoint it (:mod:`.checkpoint`), resume it
exactly or refuse (:mod:`.resume`); its directory's files are named once in :mod:`.rundir`."""
