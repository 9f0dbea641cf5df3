"""A retrieval server over HTTP, and the retriever that asks one: many trainer processes share one index.

    python -m minisearcher.serve --index index/wiki-18 --port 8000      # or --corpus FILE: BM25 built at start
    python train.py --retriever http://localhost:8000 ...

Requests and responses have the shape of Search-R1's retrieval server (search_r1/search/retrieval_server.py), so
a trainer here can ask a Search-R1 server that already runs, and Search-R1's trainer can ask this one:

    POST /retrieve  {"queries": ["...", ...], "topk": 3, "return_scores": true}
    ->              {"result": [[{"document": {"id", "title", "text", "contents"}, "score": 12.3}, ...], ...]}

Without "return_scores" (or with false) each list holds the documents themselves; without "topk", --top-k. A
document's "contents" is '"Title"\\ntext', as in the wiki-18 dump: Search-R1's trainer reads only that field.
"""
import argparse
import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .data import load_corpus, split_contents
from .index import SavedBM25
from .retriever import BM25


def serve(index: BM25, host: str, port: int, top_k: int):
    """Answer POST /retrieve until interrupted, one thread per request."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path.rstrip("/") != "/retrieve":
                return self.reply(404, {"error": f"no {self.path} here: POST /retrieve"})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                queries, k = request["queries"], request.get("topk") or top_k
                if not (isinstance(queries, list) and all(isinstance(q, str) for q in queries)):
                    raise ValueError("'queries' must be a list of strings")
                if not isinstance(k, int) or k < 1:
                    raise ValueError("'topk' must be a positive integer")
            except (ValueError, KeyError, TypeError) as e:
                return self.reply(400, {"error": f"{type(e).__name__}: {e}"})
            result = []
            for query in queries:
                found, scores = index.top_k(index.words(query), k)
                documents = [document(index.passages[j]) for j in found]
                result.append([{"document": d, "score": float(s)} for d, s in zip(documents, scores)]
                              if request.get("return_scores") else documents)
            self.reply(200, {"result": result})

        def reply(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass  # a line per request, one per search round of every trainer, would bury the server's own output

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"serving {index} at http://{host}:{server.server_port}/retrieve", flush=True)
    server.serve_forever()


def document(passage: dict) -> dict:
    return {**passage, "contents": f'"{passage["title"]}"\n{passage["text"]}'}


def passage(document: dict) -> dict:
    """A passage {"id", "title", "text"} from a server's document: this server's, or a Search-R1 server's (its dense
    retrievers send {"id", "contents"}, its BM25 one {"title", "text", "contents"})."""
    if "title" in document and "text" in document:
        title, text = document["title"], document["text"]
    else:
        title, text = split_contents(document["contents"])
    return {"id": str(document.get("id", "")), "title": title, "text": text}


class HTTPRetriever:
    """Searches through a retrieval server: http://host:port, or its full address ending in /retrieve."""

    def __init__(self, url: str, timeout: float = 120):
        self.url = url.rstrip("/").removesuffix("/retrieve") + "/retrieve"
        self.timeout = timeout
        self.search(["test"], 1)  # nothing answers, or something else does: say so now, before a model is loaded

    def __str__(self):
        return f"the retrieval server at {self.url}"

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        # scores asked for although unused: Search-R1's server fails without them (it unpacks (results, scores))
        body = json.dumps({"queries": queries, "topk": k, "return_scores": True}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                result = json.load(response)["result"]
            return [[passage(item["document"]) for item in found] for found in result]
        except urllib.error.HTTPError as e:
            raise ValueError(f"the retrieval server at {self.url} answered {e.code} {e.reason}: "
                             f"{e.read()[:500].decode(errors='replace')}") from None
        except OSError as e:  # refused, unknown host, timed out
            raise ValueError(f"no retrieval server answers at {self.url} ({e}); start one with "
                             "python -m minisearcher.serve") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.url} answered, but not as a retrieval server does ({type(e).__name__}: {e})") \
                from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    served = p.add_mutually_exclusive_group(required=True)
    served.add_argument("--index", help="an index folder built by python -m minisearcher.index")
    served.add_argument("--corpus", help="JSON lines of passages, indexed in memory at start (small corpora)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to answer other machines too")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the address is printed)")
    p.add_argument("--top-k", type=int, default=3, help="passages per query when a request has no 'topk'")
    args = p.parse_args(argv)
    try:
        index = SavedBM25(args.index) if args.index else BM25(load_corpus(args.corpus))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    serve(index, args.host, args.port, args.top_k)


if __name__ == "__main__":
    main()
