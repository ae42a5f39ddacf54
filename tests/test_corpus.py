from inheritune.assets.corpus import austen_documents, brown_document, brown_files, detokenize


def test_detokenize_attaches_punctuation_and_quotes():
    words = ["``", "Only", "a", "handful", "''", ",", "the", "jury", "said", "(", "twice", ")", "."]
    assert detokenize(words) == '"Only a handful", the jury said (twice).'


def test_brown_document_strips_tags_and_keeps_paragraphs():
    raw = "\n\n\tThe/at jury/nn said/vbd ./.\n\tIt/pps won/vbd 1/2/cd ./.\nThen/rb left/vbd ./.\n"
    assert brown_document(raw) == "The jury said.\n\nIt won 1/2. Then left."


def test_austen_chapters_become_documents():
    lines = ["EMMA", "", "By Jane Austen", "", "CHAPTER I", "", "Emma Woodhouse, handsome,", "clever, and rich.",
             "", "She was the youngest.", "", "CHAPTER II", "", "Mr. Weston was a native."]
    docs = list(austen_documents({"emma": lines}))
    assert [d["source"] for d in docs] == ["austen/emma/Chapter I", "austen/emma/Chapter II"]
    assert docs[0]["text"] == "Emma, Chapter I\n\nEmma Woodhouse, handsome, clever, and rich.\n\nShe was the youngest."
    assert "By Jane Austen" not in docs[0]["text"]


def test_brown_files_are_the_samples_in_name_order():
    files = {"cb02": b"Then/rb left/vbd ./.", "README.md": b"not a sample", "ca01": b"The/at jury/nn said/vbd ./.",
             "ca01.bak": b"x"}
    assert list(brown_files(files)) == [{"text": "The jury said.", "source": "brown/ca01"},
                                        {"text": "Then left.", "source": "brown/cb02"}]
