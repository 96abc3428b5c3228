// Command expand asks Espalier a question in one Answer call: it prints the outline as the skeleton
// is written, then the plan, then each point under its title as it finishes, then a summary line.
// (Plan, then Expand, is the way for a caller that edits the graph in between.) A failed call prints
// its gRPC status code name and exits 1.
//
//	expand -target localhost:50051 "How can I improve my time management skills?"
//
// The stubs are generated from protos/espalier/v1/espalier.proto, not checked in: clients/go/build.sh.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	espalierv1 "espalier/gen/go/espalier/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var modes = map[string]espalierv1.Mode{
	"auto": espalierv1.Mode_MODE_AUTO, "direct": espalierv1.Mode_MODE_DIRECT,
	"sot": espalierv1.Mode_MODE_SOT, "sgd": espalierv1.Mode_MODE_SGD,
}

func main() {
	target := flag.String("target", "localhost:50051", "host:port of the Espalier server")
	mode := flag.String("mode", "auto", "auto, direct, sot or sgd")
	pointTokens := flag.Uint("point-tokens", 0, "token budget of each point (0: the server's default)")
	deadline := flag.Duration("deadline", 5*time.Minute, "deadline of the whole answer")
	flag.Parse()
	m, ok := modes[*mode]
	if !ok || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: expand [-target HOST:PORT] [-mode auto|direct|sot|sgd] [-point-tokens N] QUESTION")
		os.Exit(2)
	}
	if err := run(*target, m, uint32(*pointTokens), *deadline, strings.Join(flag.Args(), " ")); err != nil {
		// status.Code names the gRPC status (INVALID_ARGUMENT, UNAVAILABLE, ...) as the API documents it.
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", codeName(err), status.Convert(err).Message())
		os.Exit(1)
	}
}

func codeName(err error) string {
	// codes.Code.String() is CamelCase ("InvalidArgument"); the API and the other clients say INVALID_ARGUMENT.
	var b strings.Builder
	for i, r := range status.Code(err).String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

func run(target string, mode espalierv1.Mode, pointTokens uint32, deadline time.Duration, question string) error {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	// The shared token, when the server has one, from the environment (flags show in ps).
	if token := os.Getenv("ESPALIER_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := espalierv1.NewEspalierServiceClient(conn)

	settings := &espalierv1.GenerationSettings{}
	if pointTokens > 0 {
		settings.PointMaxTokens = &pointTokens
	}
	stream, err := client.Answer(ctx, &espalierv1.AnswerRequest{Question: question, Mode: mode, Settings: settings})
	if err != nil {
		return err
	}
	// A node's header: "[id] title" for a point; the answer's opening and closing sentences are
	// paragraphs of their own, without one. Known once the plan is ready.
	headers := map[uint32]string{}
	points := 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch e := resp.Event.Event.(type) {
		case *espalierv1.AnswerEvent_NodePlanned:
			// the outline as the skeleton is written, a line a point; a point may start (and finish)
			// before the plan is ready, so its header is known from here
			n := e.NodePlanned.Node
			fmt.Printf("outline: %d. %s\n", e.NodePlanned.Position, n.GetTitle())
			headers[n.GetId()] = fmt.Sprintf("\n[%d] %s\n", n.GetId(), n.GetTitle())
		case *espalierv1.AnswerEvent_PlanReady:
			for _, n := range e.PlanReady.Graph.GetNodes() {
				if n.Part == espalierv1.NodePart_NODE_PART_OPENING || n.Part == espalierv1.NodePart_NODE_PART_CLOSING {
					headers[n.Id] = "\n"
					continue
				}
				headers[n.Id] = fmt.Sprintf("\n[%d] %s\n", n.Id, n.Title)
				points++
			}
			fmt.Printf("plan: %s, %d points (%s)\n", e.PlanReady.Graph.GetRoute(), points, e.PlanReady.Reason)
		case *espalierv1.AnswerEvent_NodeFinished:
			fmt.Printf("%s%s\n", header(headers, e.NodeFinished.NodeId), e.NodeFinished.Text)
		case *espalierv1.AnswerEvent_NodeFailed:
			fmt.Printf("%s  (failed: %s: %s)\n", header(headers, e.NodeFailed.NodeId), e.NodeFailed.Error,
				e.NodeFailed.Reason)
		case *espalierv1.AnswerEvent_AnswerDone:
			var tokens uint32
			for _, u := range e.AnswerDone.Usage {
				tokens += u.CompletionTokens
			}
			t := e.AnswerDone.Timings
			fmt.Printf("done: %s, %d points, %d failed, %d tokens, first token %.2f s, total %.2f s\n",
				e.AnswerDone.Route, points, len(e.AnswerDone.FailedNodeIds), tokens,
				t.GetFirstTokenS(), t.GetTotalS())
		}
	}
}

// header of a node, or "[id]" for one the plan did not list.
func header(headers map[uint32]string, id uint32) string {
	if h, ok := headers[id]; ok {
		return h
	}
	return fmt.Sprintf("\n[%d]\n", id)
}
